package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/internal/cliflag"
	"github.com/nsinit/nsinit/internal/earlyinit"
	"github.com/nsinit/nsinit/internal/supervise"
)

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

// runInit is `nsinit [options] -- CMD [ARGS...]` when internal/earlyinit
// left it to main: a command line it does not read (options with values,
// -h...), a restored agent, or the machine's init.
func runInit(args []string) int {
	// One P, as internal/earlyinit's init: for a restored agent also fewer
	// runtime threads taking pids in its namespace before it sets the cursor.
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
	// tini's environment variables, and nsinit's names for them.
	cfg.Subreaper = earlyinit.EnvSubreaper()
	cfg.SignalGroup = earlyinit.EnvSignalGroup()
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
	*verbose = earlyinit.EnvVerbosity()
	fs.Count(verbose, "v", "more diagnostics: -v prints what nsinit runs and how")
	fs.SetVersion(versionText())
	fs.Epilog = "environment (tini's variables, or the NSINIT_ names, read first):\n" +
		"  NSINIT_SUBREAPER, TINI_SUBREAPER                    set: as -s\n" +
		"  NSINIT_KILL_PROCESS_GROUP, TINI_KILL_PROCESS_GROUP  set: as -g\n" +
		"  NSINIT_VERBOSITY, TINI_VERBOSITY                    level N (default 1; 0: no warnings)\n\n" +
		commandsHelp()
	return fs, apply
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
		return supervise.ExitInitFailure
	}
	earlyinit.Prepare(&cfg.Config, verbose, cfg.Started != nil)
	return agent.Run(cfg)
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
