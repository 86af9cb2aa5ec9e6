package earlyinit

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/nsinit/nsinit/internal/supervise"
)

// The init's settings both paths share: the plain init of this package and
// `nsinit [options] -- CMD` parsed in full by cmd/nsinit.

// EnvSubreaper and EnvSignalGroup are -s and -g from tini's environment
// variables or nsinit's names for them: set to anything (even empty), as
// tini reads them.
func EnvSubreaper() bool   { return envSet("NSINIT_SUBREAPER", "TINI_SUBREAPER") }
func EnvSignalGroup() bool { return envSet("NSINIT_KILL_PROCESS_GROUP", "TINI_KILL_PROCESS_GROUP") }

// envSet says whether any of the variables is set, to any value.
func envSet(names ...string) bool {
	for _, n := range names {
		if _, ok := os.LookupEnv(n); ok {
			return true
		}
	}
	return false
}

// EnvVerbosity is the level of NSINIT_VERBOSITY, else TINI_VERBOSITY, else
// 1 (warnings), as tini's: 0 is quiet, each -v adds one.
func EnvVerbosity() int {
	for _, n := range []string{"NSINIT_VERBOSITY", "TINI_VERBOSITY"} {
		if v, ok := os.LookupEnv(n); ok {
			l, _ := strconv.Atoi(trimSpace(v)) // atoi, as tini: junk is 0
			return max(l, 0)
		}
	}
	return 1
}

// trimSpace is strings.TrimSpace for ASCII blanks (package strings would
// move this package's initialisation late: see early.go).
func trimSpace(s string) string {
	blank := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' }
	for len(s) > 0 && blank(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && blank(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// Prepare finishes an init's settings once its options are parsed, and
// prints what verbosity level verbose asks for: the signal state nsinit
// started with (the command gets the same), SIGURG forwarding, the -w
// warnings (level 1, as tini's), the warning about missing linker settings
// (level 1; not for a restored agent, whose restorer reports), and at
// level 2 what the init runs and how.
func Prepare(cfg *supervise.Config, verbose int, restored bool) {
	cfg.Ignored, cfg.Blocked, cfg.BlockedKnown = StartSignals()
	cfg.ForwardSIGURG = ForwardSIGURG()
	cfg.WarnOnReap = cfg.WarnOnReap && verbose >= 1
	if miss := MissingLinkSettings(); len(miss) > 0 && verbose >= 1 && !restored {
		os.Stderr.WriteString("nsinit: warning: built without the Makefile's linker settings (use make build or make release): " + join(miss, "; ") + "\n")
	}
	if verbose >= 2 {
		fmt.Fprintf(os.Stderr, "nsinit: pid %d, running %s, subreaper %v, signals to the process group %v, grace %v, ignored at start: %s\n",
			os.Getpid(), join(cfg.Argv, " "), cfg.Subreaper || os.Getpid() != 1, cfg.SignalGroup, cfg.Grace, signalList(cfg.Ignored))
	}
}

func signalList(ss []syscall.Signal) string {
	if len(ss) == 0 {
		return "none"
	}
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = strconv.Itoa(int(s))
	}
	return join(names, ",")
}

// join is strings.Join (see trimSpace).
func join(ss []string, sep string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += sep
		}
		out += s
	}
	return out
}
