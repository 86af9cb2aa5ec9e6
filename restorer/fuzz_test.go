package restorer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

// fuzzOptions are fixed: the plan is a pure function of the image and
// these, and nothing asks the kernel. An agent binary is named so that the
// agent and waiter paths of the planner are reached too.
var fuzzOptions = Options{
	Payload:  PayloadExec,
	AgentExe: "/nsinit",
	Features: Features{MultiLevelSetTID: true, PidMax: pstree.MaxPID},
}

// FuzzPlan feeds arbitrary bytes through everything `nsinit show` and
// `nsinit restore --dry-run` do with an image: decode, validate, print as
// JSON, plan, print the plan. An input that starts with an image header
// loses it, so that every mutation reaches the payload (the header and its
// checksum are FuzzDecode's). Any outcome but a plan or an error wrapping
// ErrBadImage or ErrUnsupported fails. Seeds: imagefile's FuzzDecode
// corpus, with its hostile images, the plan tests' trees (which plan) and
// testdata/fuzz/FuzzPlan.
func FuzzPlan(f *testing.F) {
	for _, b := range fuzzSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= imagefile.HeaderSize && bytes.HasPrefix(b, []byte(imagefile.Magic)) {
			b = b[imagefile.HeaderSize:]
		}
		tr, err := imagefile.DecodePayload(b)
		if err != nil {
			return
		}
		if _, err := pstree.JSON(tr); err != nil {
			t.Fatalf("show: %v", err)
		}
		p, err := NewPlan(tr, fuzzOptions)
		if err != nil {
			if !errors.Is(err, ErrBadImage) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("plan: error wraps neither ErrBadImage nor ErrUnsupported: %v", err)
			}
			return
		}
		_ = p.String()
	})
}

// fuzzSeeds are decodeCorpus and the encoded trees of the plan tests.
func fuzzSeeds(tb testing.TB) [][]byte {
	seeds := decodeCorpus(tb)
	for _, tr := range plannable() {
		b, err := imagefile.Encode(tr)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// plannable are trees of the plan tests that plan with fuzzOptions.
func plannable() []*pstree.Tree {
	return []*pstree.Tree{f43(), pfcTree(), deepChain(8, 23000), nsTree()}
}

// decodeCorpusDir holds imagefile's committed FuzzDecode seeds.
var decodeCorpusDir = filepath.Join("..", "imagefile", "testdata", "fuzz", "FuzzDecode")

// decodeCorpus reads every seed of decodeCorpusDir.
func decodeCorpus(tb testing.TB) [][]byte {
	ents, err := os.ReadDir(decodeCorpusDir)
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	for _, e := range ents {
		out = append(out, decodeSeed(tb, e.Name()))
	}
	if len(out) == 0 {
		tb.Fatalf("no seeds in %s", decodeCorpusDir)
	}
	return out
}

// decodeSeed reads seed name of decodeCorpusDir, a "go test fuzz v1" file
// holding one []byte.
func decodeSeed(tb testing.TB, name string) []byte {
	raw, err := os.ReadFile(filepath.Join(decodeCorpusDir, name))
	if err != nil {
		tb.Fatal(err)
	}
	_, lit, ok := strings.Cut(strings.TrimSpace(string(raw)), "\n[]byte(")
	if !ok || !strings.HasSuffix(lit, ")") {
		tb.Fatalf("%s: not a go test fuzz v1 []byte file", name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	return []byte(s)
}

// TestFuzzSeedsReachPlanner: the seeds get past the validator into the
// planner, and some of them through it, or FuzzPlan would only fuzz the
// decoder.
func TestFuzzSeedsReachPlanner(t *testing.T) {
	planned := 0
	for _, b := range fuzzSeeds(t) {
		tr, err := imagefile.Decode(b)
		if err != nil {
			continue
		}
		switch _, err := NewPlan(tr, fuzzOptions); {
		case err == nil:
			planned++
		case !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrBadImage):
			t.Errorf("valid seed: %v", err)
		}
	}
	if want := len(plannable()); planned < want {
		t.Errorf("%d seeds plan, want at least %d", planned, want)
	}
}
