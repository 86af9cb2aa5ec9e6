package earlyinit

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/waiter"
)

// TestEarlyConstants: the values this package mirrors because it cannot
// import their packages.
func TestEarlyConstants(t *testing.T) {
	if waiterFD != waiter.FD || waiterMagic != waiter.Magic {
		t.Errorf("waiterFD, waiterMagic = %d, %#x; internal/waiter has %d, %#x", waiterFD, waiterMagic, waiter.FD, uint64(waiter.Magic))
	}
	if agentControlFD != agentconn.ControlFD {
		t.Errorf("agentControlFD = %d; internal/agentconn has %d", agentControlFD, agentconn.ControlFD)
	}
}

// early are the packages this package and internal/supervise may import:
// Go initialises them (and what they import) before the heavy packages.
var early = []string{"os", "os/signal", "syscall", "fmt", "strconv", "errors", "io", "time", "runtime", "unsafe", "sync/atomic"}

// TestEarlyImports: this package depends on nothing but the early
// packages (and internal/supervise, which depends on no more), so that its
// init function runs before the other packages' initialisers (package
// comment).
func TestEarlyImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	deps := func(pkgs ...string) map[string]bool {
		out, err := exec.Command(goTool, append([]string{"list", "-deps"}, pkgs...)...).Output()
		if err != nil {
			t.Fatalf("go list -deps %v: %v", pkgs, err)
		}
		m := map[string]bool{}
		for _, p := range strings.Fields(string(out)) {
			m[p] = true
		}
		return m
	}
	allowed := deps(early...)
	allowed["github.com/nsinit/nsinit/internal/earlyinit"] = true
	allowed["github.com/nsinit/nsinit/internal/supervise"] = true
	for p := range deps(".") {
		if !allowed[p] {
			t.Errorf("internal/earlyinit depends on %s, which is not one of the early packages' dependencies", p)
		}
	}
}

func TestParsePlain(t *testing.T) {
	t.Setenv("NSINIT_VERBOSITY", " 2\n")
	cfg, verbose, ok := ParsePlain([]string{"-sg", "-w", "-vv", "--", "sh", "-c", "x"})
	if !ok || !cfg.Subreaper || !cfg.SignalGroup || !cfg.WarnOnReap || verbose != 4 || strings.Join(cfg.Argv, " ") != "sh -c x" {
		t.Errorf("ParsePlain = %+v, %d, %v", cfg, verbose, ok)
	}
	for _, args := range [][]string{
		nil, {"--"}, {"sh"}, {"-e", "3", "--", "sh"}, {"-v2", "--", "sh"}, {"--grace=1s", "--", "sh"},
		{"-h"}, {"dump", "-t", "1"}, {"-", "--", "sh"}, {"-s", "sh"},
	} {
		if _, _, ok := ParsePlain(args); ok {
			t.Errorf("ParsePlain(%q) accepted it; main must parse it", args)
		}
	}
}
