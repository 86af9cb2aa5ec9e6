package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestPlainBuildSaysSo: a binary built without the Makefile's linker
// settings (plain `go build`, as `go install` makes it) says so in its
// version and warns when it starts as an init (not at TINI_VERBOSITY=0);
// the Makefile's binary does neither.
func TestPlainBuildSaysSo(t *testing.T) {
	if out, errOut, _ := run(t, "--version"); strings.Contains(out, "without") {
		t.Errorf("make build's --version: %q %q", out, errOut)
	}
	if _, errOut, code := run(t, "--", "/bin/true"); code != 0 || strings.Contains(errOut, "warning") {
		t.Errorf("make build's init: status %d, stderr %q", code, errOut)
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	plain := filepath.Join(t.TempDir(), "nsinit")
	build := exec.Command(goTool, "build", "-o", plain, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(plain, "--version").Output()
	if err != nil || !strings.Contains(string(out), "built without the Makefile's linker settings") || !strings.Contains(string(out), "SIGURG") {
		t.Errorf("plain build's --version: %v %q", err, out)
	}
	var stderr strings.Builder
	cmd := exec.Command(plain, "--", "/bin/true")
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || !strings.Contains(stderr.String(), "nsinit: warning: built without") {
		t.Errorf("plain build as init: %v, stderr %q", err, stderr.String())
	}
	stderr.Reset()
	cmd = exec.Command(plain, "--", "/bin/true")
	cmd.Env, cmd.Stderr = append(os.Environ(), "TINI_VERBOSITY=0"), &stderr
	if err := cmd.Run(); err != nil || stderr.Len() != 0 {
		t.Errorf("plain build at TINI_VERBOSITY=0: %v, stderr %q", err, stderr.String())
	}
}
