package restorer

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
)

// TestE2ECRIUSpellings restores and dumps a real tree through the built
// binary with CRIU's spellings of the options: --images-dir,
// --restore-detached, --tree, -R, -o (relative to the image directory, as
// with CRIU) and -v levels.
func TestE2ECRIUSpellings(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	tr := place(t, sleepers(f43()))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	out, err := nsinit(t, "restore", "--images-dir", src, "--restore-detached", "-v", "-o", "restore.log")
	root := strconv.Itoa(tr.Tasks[0].PID())
	if err != nil || strings.TrimSpace(out) != root {
		t.Fatalf("restore --restore-detached: %v, printed %q, want %s", err, out, root)
	}
	if b, err := os.ReadFile(filepath.Join(src, "restore.log")); err != nil || !strings.Contains(string(b), "root pid "+root) {
		t.Errorf("restore log: %v\n%s", err, b)
	}
	img := t.TempDir()
	if out, err := nsinit(t, "dump", "--tree", root, "--images-dir", img, "-R", "--unchecked", "-o", "dump.log", "-v4"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(img, "dump.log")); err != nil || !strings.Contains(string(b), "wrote "+strconv.Itoa(len(tr.Tasks))+" tasks") {
		t.Errorf("dump log: %v\n%s", err, b)
	}
	// -R left it running, unchanged.
	if out, err := nsinit(t, "check", "--tree", root, "--images-dir", img); err != nil {
		t.Errorf("check after dump -R: %v\n%s", err, out)
	}
	checkTree(t, tr, PayloadExec)
}

// TestE2EUncheckedDump: dump --unchecked uses no guard even where the eBPF
// guard loads, and the image says so; without it the image is checked.
func TestE2EUncheckedDump(t *testing.T) {
	needRoot(t)
	testutil.Require(t, testutil.BPF)
	tr := place(t, sleepers(f43()))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	root := strconv.Itoa(tr.Tasks[0].PID())
	if out, err := nsinit(t, "restore", "-D", src, "-d"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	for _, unchecked := range []bool{true, false} {
		img := t.TempDir()
		args := []string{"dump", "-t", root, "-D", img}
		if unchecked {
			args = append(args, "--unchecked")
		}
		if out, err := nsinit(t, args...); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
		got, err := imagefile.Read(img)
		if err != nil {
			t.Fatal(err)
		}
		if got.Checked == unchecked {
			t.Errorf("%q: image says checked: %v", args, got.Checked)
		}
	}
}
