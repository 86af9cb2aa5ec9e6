package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// TestShowEncodeRoundTrip: show takes a directory or a file; show --raw
// and encode turn an image into JSON and back into the same bytes, through
// files and through a pipe.
func TestShowEncodeRoundTrip(t *testing.T) {
	src := t.TempDir()
	tr := oneTaskTree(4242)
	tr.Tasks = append(tr.Tasks, oneTask(4243))
	tr.Tasks[1].PPID, tr.Tasks[1].State, tr.Tasks[1].ExitStatus = 4242, pstree.Zombie, 3<<8
	tr.Tasks[1].SIDs, tr.Tasks[1].PGIDs = []int{4242}, []int{4242}
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(src, imagefile.FileName)
	fromDir, _, code := run(t, "show", src)
	fromFile, errOut, code2 := run(t, "show", img)
	if code != 0 || code2 != 0 || fromDir != fromFile || !strings.Contains(fromDir, "4243") {
		t.Fatalf("show DIR (%d) and show FILE (%d) differ: %s\n%s\n%s", code, code2, errOut, fromDir, fromFile)
	}
	raw, errOut, code := run(t, "show", src, "--raw")
	if code != 0 {
		t.Fatalf("show --raw: status %d: %s", code, errOut)
	}
	js := filepath.Join(t.TempDir(), "image.json")
	if err := os.WriteFile(js, []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "img")
	if _, errOut, code := run(t, "encode", "-i", js, "-D", dst); code != 0 {
		t.Fatalf("encode -D: status %d: %s", code, errOut)
	}
	want, _ := os.ReadFile(img)
	if got, _ := os.ReadFile(filepath.Join(dst, imagefile.FileName)); !bytes.Equal(got, want) {
		t.Errorf("encode -D wrote %d bytes, not the %d of the original image", len(got), len(want))
	}
	// show --raw | encode -o FILE
	out := filepath.Join(t.TempDir(), "piped.img")
	enc := exec.Command(testutil.Binary(t), "encode", "-o", out)
	enc.Stdin = strings.NewReader(raw)
	if b, err := enc.CombinedOutput(); err != nil {
		t.Fatalf("encode -o from stdin: %v\n%s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Errorf("encode -o wrote %d bytes, not the %d of the original image", len(got), len(want))
	}
	// A hand edit that breaks the tree is refused, as any image read is.
	bad := strings.Replace(raw, "4242", "4999", 1)
	enc = exec.Command(testutil.Binary(t), "encode", "-o", filepath.Join(t.TempDir(), "bad.img"))
	enc.Stdin = strings.NewReader(bad)
	if b, err := enc.CombinedOutput(); err == nil || enc.ProcessState.ExitCode() != exitBadImage {
		t.Errorf("encode of a broken tree: %v (want status %d)\n%s", err, exitBadImage, b)
	}
}
