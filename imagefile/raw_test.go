package imagefile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/pstree"
	"google.golang.org/protobuf/proto"
)

// TestRawJSONRoundTrip: the raw JSON of an image encodes back to the same
// bytes.
func TestRawJSONRoundTrip(t *testing.T) {
	b, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	js, invalid, err := RawJSON(b)
	if err != nil || invalid != nil {
		t.Fatalf("RawJSON: %v, %v", err, invalid)
	}
	// Bytes fields are base64: "Ym94" is the hostname "box".
	if !strings.Contains(string(js), `"namespaces"`) || !strings.Contains(string(js), `"Ym94"`) {
		t.Errorf("raw JSON lacks fields:\n%s", js)
	}
	back, err := FromRawJSON(js)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, b) {
		t.Fatalf("round trip changed the image: %d bytes, want %d", len(back), len(b))
	}
}

// TestRawJSONInvalid: the raw form shows an image that fails validation,
// with the validation error; encode refuses such JSON, and unknown fields.
func TestRawJSONInvalid(t *testing.T) {
	img := toProto(sample())
	img.Tasks[2].Ppid = 999
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(img)
	if err != nil {
		t.Fatal(err)
	}
	js, invalid, err := RawJSON(withHeader(payload))
	if err != nil || !errors.Is(invalid, pstree.ErrInvalid) || !strings.Contains(string(js), "999") {
		t.Fatalf("RawJSON of an invalid image: %v, invalid %v\n%s", err, invalid, js)
	}
	if _, err := FromRawJSON(js); !errors.Is(err, pstree.ErrInvalid) {
		t.Errorf("FromRawJSON of an invalid image: %v, want ErrInvalid", err)
	}
	if _, err := FromRawJSON([]byte(`{"taskz": []}`)); !errors.Is(err, ErrFormat) {
		t.Errorf("unknown field: %v, want ErrFormat", err)
	}
	if _, _, err := RawJSON([]byte("NSINITIMgarbage")); !errors.Is(err, ErrFormat) {
		t.Errorf("RawJSON of garbage: %v, want ErrFormat", err)
	}
}

// TestReadPath: a directory means its pstree.img, anything else the file.
func TestReadPath(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, sample()); err != nil {
		t.Fatal(err)
	}
	fromDir, file, err := ReadPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if file != filepath.Join(dir, FileName) {
		t.Errorf("ReadPath of a directory read %s", file)
	}
	fromFile, _, err := ReadPath(filepath.Join(dir, FileName))
	if err != nil || !bytes.Equal(fromDir, fromFile) {
		t.Fatalf("file: %v, same bytes %v", err, bytes.Equal(fromDir, fromFile))
	}
	link := filepath.Join(dir, "link")
	os.Symlink(filepath.Join(dir, FileName), link)
	if _, _, err := ReadPath(link); !errors.Is(err, ErrNotRegular) {
		t.Errorf("symlink: %v, want ErrNotRegular", err)
	}
}
