package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/nsinit/nsinit/agent"
)

// noPreemptSignals is "1" when the Makefile linked the binary with the Go
// runtime's async preemption off (godebugDefault=asyncpreemptoff=1): then
// the runtime never sends itself SIGURG and a SIGURG nsinit receives can be
// forwarded. A plain `go build` leaves it empty and SIGURG is dropped.
var noPreemptSignals string

const initOptionsHelp = `  -s          be a child subreaper (automatic when not PID 1)
  -g          forward signals to the command's process group
  -p SIGNAL   signal nsinit gets when its parent dies
  -e CODE     report exit code CODE of the command as 0 (repeatable)
  --listen P  serve restores into this pid namespace on unix socket P
              (nsinit restore --agent P), to clients of nsinit's own uid
  --listen-uid UID
              also serve uid UID (repeatable): its restores run as UID
              with CAP_CHECKPOINT_RESTORE only
  -v          verbose diagnostics
  --version   print the version`

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

// initFlags registers the init options (-s -g -p -e -v) on fs, for both
// `nsinit -- CMD` and a restored agent; the returned apply fills cfg from
// them once fs is parsed.
func initFlags(fs *flag.FlagSet, cfg *agent.Config) (apply func() error) {
	var (
		zero   exitCodes
		pdeath string
	)
	fs.BoolVar(&cfg.Subreaper, "s", false, "")
	fs.BoolVar(&cfg.SignalGroup, "g", false, "")
	fs.StringVar(&pdeath, "p", "", "")
	fs.Var(&zero, "e", "")
	fs.StringVar(&cfg.Listen, "listen", "", "")
	fs.Var((*uids)(&cfg.ListenUIDs), "listen-uid", "")
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

func parseAndRun(args []string) int {
	fs := flag.NewFlagSet("nsinit", flag.ContinueOnError)
	fs.Usage = func() { usage(os.Stderr) }
	var (
		cfg       agent.Config
		verbose   bool
		printVers bool
	)
	apply := initFlags(fs, &cfg)
	fs.BoolVar(&verbose, "v", false, "")
	fs.BoolVar(&printVers, "version", false, "")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if printVers {
		fmt.Println("nsinit", version)
		return 0
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "nsinit: no command given")
		usage(os.Stderr)
		return 2
	}
	if err := apply(); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit: %v\n", err)
		return 2
	}
	cfg.Argv = fs.Args()
	if err := restoredAgent(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit: %v\n", err)
		return agent.ExitInitFailure
	}
	cfg.Ignored = originallyIgnored()
	cfg.Blocked, cfg.BlockedKnown = origSigMask, origSigKnown != 0
	if verbose {
		fmt.Fprintf(os.Stderr, "nsinit: pid %d, running %s, ignored at start: %s\n",
			os.Getpid(), strings.Join(cfg.Argv, " "), signalList(cfg.Ignored))
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
