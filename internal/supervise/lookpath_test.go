package supervise

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestLookPath: lookPath finds what os/exec.LookPath finds, and its
// failures give the statuses a shell gives (127 not found, 126 found but
// not executable).
func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "/nonexistent::"+dir)
	if got, err := lookPath("prog"); err != nil || got != exe {
		t.Errorf("lookPath(prog) = %q, %v, want %q", got, err, exe)
	}
	if got, err := lookPath(exe); err != nil || got != exe {
		t.Errorf("lookPath(%s) = %q, %v", exe, got, err)
	}
	for name, code := range map[string]int{
		"no-such-prog":                ExitNotFound,
		filepath.Join(dir, "missing"): ExitNotFound,
		filepath.Join(dir, "data"):    ExitNotExecutable,
		filepath.Join(dir, "sub"):     ExitNotExecutable,
		"data":                        ExitNotFound, // not executable: skipped in PATH
	} {
		if _, err := lookPath(name); err == nil || startFailureCode(err) != code {
			t.Errorf("lookPath(%q): %v, status %d, want %d", name, err, startFailureCode(err), code)
		}
	}
	// Found only through a relative entry: refused, as os/exec refuses it.
	t.Chdir(dir)
	t.Setenv("PATH", ".")
	if _, err := lookPath("prog"); !errors.Is(err, errDot) || startFailureCode(err) != ExitNotExecutable {
		t.Errorf("lookPath(prog) through \".\": %v, want errDot", err)
	}
}
