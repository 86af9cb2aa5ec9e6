package vmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCPIORoundTrip writes an archive and unpacks it with busybox's cpio,
// an independent newc reader, then compares what came out.
func TestCPIORoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.Dir("/etc", 0o755)
	c.File("/etc/nsinit/cmd", 0o644, 7, strings.NewReader("--\x00a\x00bc"))
	c.File("/bin/odd", 0o755, 3, strings.NewReader("abc")) // needs padding
	c.File("/empty", 0o600, 0, strings.NewReader(""))
	c.Symlink("/bin/sh", "busybox")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not 4-aligned", buf.Len())
	}
	if _, err := os.Stat(Busybox); err != nil {
		t.Skip("needs /bin/busybox (busybox-static) as an independent cpio reader")
	}
	dir := t.TempDir()
	cmd := exec.Command(Busybox, "cpio", "-i", "-d")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio -i: %v\n%s", err, out)
	}
	for name, want := range map[string]string{"etc/nsinit/cmd": "--\x00a\x00bc", "bin/odd": "abc", "empty": ""} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v, want %q", name, got, err, want)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "bin/odd")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("bin/odd mode: %v, %v", st.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Errorf("bin/sh -> %q, %v", l, err)
	}
}

// TestCPIOShortSource: a source shorter than announced is an error, not a
// corrupt archive.
func TestCPIOShortSource(t *testing.T) {
	c := newCPIOWriter(&bytes.Buffer{})
	c.File("/x", 0o644, 10, strings.NewReader("abc"))
	if err := c.Close(); err == nil || !strings.Contains(err.Error(), "/x") {
		t.Fatalf("short source: got %v, want an error naming /x", err)
	}
}

func TestParseTestOutput(t *testing.T) {
	console := "boot noise\r\n=== RUN   TestA\r\n--- PASS: TestA (0.00s)\r\n" +
		"=== RUN   TestB\r\n=== RUN   TestB/sub\r\n    b_test.go:9: boom\r\n    --- FAIL: TestB/sub (0.01s)\r\n--- FAIL: TestB (0.01s)\r\n" +
		"=== RUN   TestC\r\n    c_test.go:3: needs root\r\n--- SKIP: TestC (0.00s)\r\nFAIL\r\n"
	got := parseTestOutput(console)
	want := []struct{ name, verdict, has string }{{"TestA", "PASS", ""}, {"TestB", "FAIL", "boom"}, {"TestC", "SKIP", "needs root"}}
	if len(got) != len(want) {
		t.Fatalf("got %d results %+v, want %d", len(got), got, len(want))
	}
	for i, w := range want {
		if got[i].name != w.name || got[i].verdict != w.verdict || !strings.Contains(got[i].output, w.has) {
			t.Errorf("result %d = %+v, want %s %s containing %q", i, got[i], w.name, w.verdict, w.has)
		}
	}
}

func TestKernelHelpers(t *testing.T) {
	dir := t.TempDir()
	notBz := filepath.Join(dir, "vmlinuz")
	os.WriteFile(notBz, bytes.Repeat([]byte{0}, 4096), 0o644)
	if err := extractVmlinux(t.Context(), notBz, filepath.Join(dir, "vmlinux")); err == nil || !strings.Contains(err.Error(), "not a bzImage") {
		t.Errorf("extractVmlinux(zeros) = %v, want a not-a-bzImage error", err)
	}
	out := "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
	if m := dependsRE.FindStringSubmatch(out); m == nil || m[1] != "linux-image-6.1.0-56-amd64" {
		t.Errorf("dependsRE on %q = %q", out, m)
	}
	cfg := filepath.Join(dir, "config")
	os.WriteFile(cfg, []byte("#\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n"), 0o644)
	k := Kernel{Version: "t", Config: cfg}
	for opt, want := range map[string]bool{"CONFIG_A": true, "CONFIG_B": false, "CONFIG_C": false, "CONFIG_AB": false} {
		if got, err := k.Builtin(opt); err != nil || got != want {
			t.Errorf("Builtin(%s) = %v, %v, want %v", opt, got, err, want)
		}
	}
	if _, err := (Kernel{Image: "x"}).Builtin("CONFIG_A"); err == nil {
		t.Error("Builtin without a config did not report it")
	}
}
