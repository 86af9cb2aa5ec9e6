package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/internal/earlyinit"
	"github.com/nsinit/nsinit/internal/testutil"
)

// TestPlainParseAgrees: every command line internal/earlyinit runs by
// itself means to it what it means to the init's full parser.
func TestPlainParseAgrees(t *testing.T) {
	t.Setenv("TINI_VERBOSITY", "0")
	for _, args := range [][]string{
		{"--", "sh"}, {"-s", "--", "sh", "-c", "x"}, {"-g", "--", "sh"}, {"-w", "--", "sh"},
		{"-v", "--", "sh"}, {"-vv", "--", "sh"}, {"-sgwv", "--", "sh"}, {"-vs", "--", "sh"},
		{"-s", "-g", "-w", "-v", "-v", "--", "sh", "--", "-s"}, {"-ww", "--", "sh"}, {"-gs", "--", "-v"},
	} {
		plain, pv, ok := earlyinit.ParsePlain(args)
		if !ok {
			t.Errorf("ParsePlain(%q) refused it", args)
			continue
		}
		var cfg agent.Config
		var verbose int
		fs, apply := newInitSet(&cfg, &verbose)
		if _, stop := fs.Parse(args); stop {
			t.Fatalf("the init's parser stopped at %q", args)
		}
		if err := apply(); err != nil {
			t.Fatal(err)
		}
		if plain.Subreaper != cfg.Subreaper || plain.SignalGroup != cfg.SignalGroup || plain.WarnOnReap != cfg.WarnOnReap ||
			pv != verbose || !slices.Equal(plain.Argv, fs.Args()) || cfg.Grace != 0 || cfg.Listen != "" || len(cfg.ZeroExitCodes) != 0 {
			t.Errorf("%q: ParsePlain gives %+v verbose %d; the init's parser %+v verbose %d args %q", args, plain, pv, cfg, verbose, fs.Args())
		}
	}
}

// TestEarlyInitSkipsInitialisers: a plain init runs before the heavy
// packages are initialised (GODEBUG=inittrace=1 lists each package's
// initialiser as it finishes); one with an option main parses runs them.
func TestEarlyInitSkipsInitialisers(t *testing.T) {
	heavy := []string{"google.golang.org/protobuf/internal/filedesc", "github.com/cilium/ebpf ", "crypto/internal/fips140 ", "net "}
	for _, c := range []struct {
		args  []string
		early bool
	}{
		{[]string{"-s", "--", "true"}, true},
		{[]string{"-e", "3", "--", "true"}, false},
	} {
		cmd := exec.Command(testutil.Binary(t), c.args...)
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nsinit %q: %v\n%s", c.args, err, out)
		}
		for _, h := range heavy {
			if ran := strings.Contains(string(out), "init "+h); ran == c.early {
				t.Errorf("nsinit %q: initialiser of %s ran: %v, want %v", c.args, h, ran, !c.early)
			}
		}
	}
}
