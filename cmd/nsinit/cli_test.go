package main

import (
	"bytes"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
)

// run runs the built nsinit and returns its stdout, stderr and exit status.
func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("nsinit %q: %v", args, err)
	}
	return o.String(), e.String(), code
}

var subcommands = []string{"dump", "restore", "show", "encode", "check", "trace"}

// TestHelp: --help and -h print on stdout and exit 0, at the top level and
// for every subcommand; the help spells options as the usage line does.
func TestHelp(t *testing.T) {
	cases := [][]string{{"--help"}, {"-h"}, {"help"}}
	for _, c := range subcommands {
		cases = append(cases, []string{c, "--help"}, []string{c, "-h"})
	}
	oneDashWord := regexp.MustCompile(`(^|[\s\[|(,])-[a-z][a-z-]+`)
	for _, args := range cases {
		out, errOut, code := run(t, args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "usage: nsinit") {
			t.Errorf("nsinit %q: status %d, stderr %q, stdout %q", args, code, errOut, out)
			continue
		}
		if m := oneDashWord.FindString(out); m != "" {
			t.Errorf("nsinit %q: help spells a long option with one dash (%q):\n%s", args, m, out)
		}
	}
	out, _, _ := run(t, "--help")
	for _, c := range subcommands {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("top-level help does not list %s:\n%s", c, out)
		}
	}
	out, _, _ = run(t, "dump", "--help")
	for _, want := range []string{"-t, --tree PID", "-D, --images-dir DIR", "-R, --leave-running", "-s, --leave-stopped", "--kill", "-o, --log-file FILE", "-v, --verbosity", "-V, --version"} {
		if !strings.Contains(out, want) {
			t.Errorf("dump help lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = run(t, "restore", "--help")
	for _, want := range []string{"-D, --images-dir DIR", "-d, --detach, --restore-detached", "--pidfile FILE", "-o, --log-file FILE"} {
		if !strings.Contains(out, want) {
			t.Errorf("restore help lacks %q:\n%s", want, out)
		}
	}
}

// TestVersion: every spelling prints the version on stdout.
func TestVersion(t *testing.T) {
	cases := [][]string{{"--version"}, {"-V"}, {"version"}}
	for _, c := range subcommands {
		cases = append(cases, []string{c, "-V"}, []string{c, "--version"})
	}
	for _, args := range cases {
		out, errOut, code := run(t, args...)
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "nsinit ") {
			t.Errorf("nsinit %q: status %d, stderr %q, stdout %q", args, code, errOut, out)
		}
	}
}

// TestUsageErrors: a bad command line says what is wrong and gives the
// usage line on stderr, status 2, nothing on stdout.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-x", "--", "true"},
		{"dump", "-t", "1"},
		{"dump", "-D", "/nonexistent"},
		{"dump", "--tree", "x", "-D", "d"},
		{"dump", "-t", "1", "-D", "d", "-R", "--kill"},
		{"dump", "-t", "1", "-D", "d", "-sR"},
		{"dump", "-t", "1", "-D", "d", "--no-such-flag"},
		{"restore"},
		{"restore", "-D", "d", "--payload", "nonsense"},
		{"show"},
		{"check", "-t", "1"},
		{"trace"},
	} {
		out, errOut, code := run(t, args...)
		if code != wantUsage(args) || out != "" || !strings.Contains(errOut, "usage: nsinit") {
			t.Errorf("nsinit %q: status %d (want %d), stdout %q, stderr %q", args, code, wantUsage(args), out, errOut)
		}
	}
}

// TestInitSpellings: the init takes tini's combined short flags.
func TestInitSpellings(t *testing.T) {
	for _, args := range [][]string{
		{"-sg", "--", "true"},
		{"-s", "-g", "true"},
		{"-vvv", "-e143", "--", "sh", "-c", "kill -TERM $$"},
		{"-e", "143", "-pSIGKILL", "sh", "-c", "kill -TERM $$"},
	} {
		_, errOut, code := run(t, args...)
		if code != 0 {
			t.Errorf("nsinit %q: status %d, stderr %q", args, code, errOut)
		}
	}
}

// wantUsage is the status of a bad command line: tini's 2 for the init,
// exitUsage for a subcommand.
func wantUsage(args []string) int {
	if len(args) > 0 && commands[args[0]].run != nil {
		return exitUsage
	}
	return 2
}
