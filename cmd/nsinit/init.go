package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/internal/cliflag"
)

// noPreemptSignals is "1" when the Makefile linked the binary with the Go
// runtime's async preemption off (godebugDefault=asyncpreemptoff=1): then
// the runtime never sends itself SIGURG and a SIGURG nsinit receives can be
// forwarded. A plain `go build` leaves it empty and SIGURG is dropped.
var noPreemptSignals string

// uids is a repeatable --listen-uid flag.
type uids []uint32

func (u *uids) String() string { return fmt.Sprint(*u) }
func (u *uids) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return fmt.Errorf("uid must be 0..4294967294, got %q", s)
	}
	*u = append(*u, uint32(n))
	return nil
}

// exitCodes is a repeatable -e flag.
type exitCodes []int

func (e *exitCodes) String() string { return fmt.Sprint(*e) }
func (e *exitCodes) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 255 {
		return fmt.Errorf("exit code must be 0..255, got %q", s)
	}
	*e = append(*e, n)
	return nil
}

// runInit is `nsinit [options] -- CMD [ARGS...]`.
func runInit(args []string) int {
	// One P is plenty for a supervisor and keeps the runtime's thread count
	// and memory at their smallest.
	runtime.GOMAXPROCS(1)

	var finish func(int)
	if os.Getpid() == 1 {
		var err error
		if args, finish, err = machineHook(args); err != nil {
			fmt.Fprintf(os.Stderr, "nsinit: %v\n", err)
		}
	}
	status := parseAndRun(args)
	if finish != nil {
		finish(status)
	}
	return status
}

// initFlags defines the init options on fs, for both `nsinit -- CMD` and
// a restored agent (whose original command line is parsed again); the
// returned apply fills cfg from them once fs is parsed.
func initFlags(fs *cliflag.Set, cfg *agent.Config) (apply func() error) {
	var (
		zero   exitCodes
		pdeath string
	)
	// tini's environment variables, and nsinit's names for them: set to
	// anything (even empty), as tini reads them.
	cfg.Subreaper = envSet("NSINIT_SUBREAPER", "TINI_SUBREAPER")
	cfg.SignalGroup = envSet("NSINIT_KILL_PROCESS_GROUP", "TINI_KILL_PROCESS_GROUP")
	fs.Bool(&cfg.Subreaper, "s", "be a child subreaper (automatic when not PID 1)")
	fs.Bool(&cfg.SignalGroup, "g", "forward signals to the command's process group")
	fs.String(&pdeath, "p", "SIGNAL", "signal nsinit gets when its parent dies")
	fs.Var(&zero, "e", "CODE", "report exit code CODE of the command as 0 (repeatable)")
	fs.Bool(&cfg.WarnOnReap, "w", "print a warning for every process reaped besides the command")
	fs.Duration(&cfg.Grace, "grace", "D", "after a SIGTERM, once the command has exited: SIGTERM to every remaining descendant, SIGKILL after D; exit when all are gone (0: exit with the command, as tini)")
	fs.String(&cfg.Listen, "listen", "PATH", "serve restores into this pid namespace on unix socket PATH (nsinit restore --agent PATH), to clients of nsinit's own uid")
	fs.Var((*uids)(&cfg.ListenUIDs), "listen-uid", "UID", "also serve uid UID (repeatable): its restores run as UID with CAP_CHECKPOINT_RESTORE only")
	return func() error {
		cfg.ZeroExitCodes = zero
		if pdeath != "" {
			sig, err := agent.ParseSignal(pdeath)
			if err != nil {
				return fmt.Errorf("-p: %w", err)
			}
			cfg.ParentDeathSignal = sig
		}
		cfg.ForwardSIGURG = noPreemptSignals == "1"
		return nil
	}
}

// newInitSet is the init's command line, whose help is nsinit's top-level
// help: it lists the subcommands too.
func newInitSet(cfg *agent.Config, verbose *int) (*cliflag.Set, func() error) {
	fs := cliflag.New("nsinit",
		"nsinit [options] -- CMD [ARGS...]   run CMD under nsinit as init\n"+
			"       nsinit COMMAND [options]          (nsinit COMMAND --help for its options)", "")
	apply := initFlags(fs, cfg)
	*verbose = envVerbosity()
	fs.Count(verbose, "v", "more diagnostics: -v prints what nsinit runs and how")
	fs.SetVersion(versionText())
	fs.Epilog = "environment (tini's variables, or the NSINIT_ names, read first):\n" +
		"  NSINIT_SUBREAPER, TINI_SUBREAPER                    set: as -s\n" +
		"  NSINIT_KILL_PROCESS_GROUP, TINI_KILL_PROCESS_GROUP  set: as -g\n" +
		"  NSINIT_VERBOSITY, TINI_VERBOSITY                    level N (default 1; 0: no warnings)\n\n" +
		commandsHelp()
	return fs, apply
}

// envSet says whether any of the variables is set, to any value.
func envSet(names ...string) bool {
	for _, n := range names {
		if _, ok := os.LookupEnv(n); ok {
			return true
		}
	}
	return false
}

// envVerbosity is the level of NSINIT_VERBOSITY, else TINI_VERBOSITY, else
// 1 (warnings), as tini's: 0 is quiet, each -v adds one.
func envVerbosity() int {
	for _, n := range []string{"NSINIT_VERBOSITY", "TINI_VERBOSITY"} {
		if v, ok := os.LookupEnv(n); ok {
			l, _ := strconv.Atoi(strings.TrimSpace(v)) // atoi, as tini: junk is 0
			return max(l, 0)
		}
	}
	return 1
}

func parseAndRun(args []string) int {
	var (
		cfg     agent.Config
		verbose int
	)
	fs, apply := newInitSet(&cfg, &verbose)
	if code, stop := fs.Parse(args); stop {
		return code
	}
	if len(fs.Args()) == 0 {
		return fs.Fail("no command given")
	}
	if err := apply(); err != nil {
		return fs.Fail("%v", err)
	}
	cfg.Argv = fs.Args()
	if err := restoredAgent(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit: %v\n", err)
		return agent.ExitInitFailure
	}
	cfg.Ignored = originallyIgnored()
	cfg.Blocked, cfg.BlockedKnown = origSigMask, origSigKnown != 0
	// Warnings (-w's) need level 1, as tini's.
	cfg.WarnOnReap = cfg.WarnOnReap && verbose >= 1
	if w := linkWarning(); w != "" && verbose >= 1 && cfg.Started == nil { // not for restored agents
		os.Stderr.WriteString(w)
	}
	if verbose >= 2 {
		fmt.Fprintf(os.Stderr, "nsinit: pid %d, running %s, subreaper %v, signals to the process group %v, grace %v, ignored at start: %s\n",
			os.Getpid(), strings.Join(cfg.Argv, " "), cfg.Subreaper || os.Getpid() != 1, cfg.SignalGroup, cfg.Grace, signalList(cfg.Ignored))
	}
	return agent.Run(cfg)
}

func signalList(ss []syscall.Signal) string {
	if len(ss) == 0 {
		return "none"
	}
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = strconv.Itoa(int(s))
	}
	return strings.Join(names, ",")
}

// restoredAgent makes this init a restored agent when `nsinit restore`
// started it (its original command line, a control socket at
// agentconn.ControlFD): instead of starting its command it adopts the child
// the restorer names, never reaps the image's zombies, and - once its own
// Go runtime threads exist - puts its namespace's ns_last_pid back when the
// restorer asks (those threads took pids after the cursor the restorer had
// set; they are runtime-owned, not part of the image).
func restoredAgent(cfg *agent.Config) error {
	conn, err := agent.RestoredControl()
	if conn == nil || err != nil {
		return err
	}
	if err := agent.AwaitAdoption(conn, cfg); err != nil {
		conn.Close()
		return err
	}
	cfg.Started = func() error {
		go func() {
			defer conn.Close()
			if err := agent.ServeRestore(conn); err != nil && !errors.Is(err, io.EOF) {
				fmt.Fprintf(os.Stderr, "nsinit: restorer connection: %v\n", err)
			}
		}()
		return nil
	}
	return nil
}
