// Package supervise is nsinit's process supervisor: start the command,
// forward every signal to it, reap every child, exit with the command's
// status (tini's shape). Package agent runs it with the restore protocol
// around it; internal/earlyinit runs it alone for a plain `nsinit -- CMD`.
//
// It imports only packages Go initialises before the heavy ones nsinit
// links (protobuf, cilium/ebpf, crypto, net: see internal/earlyinit): os,
// os/signal, syscall, fmt, strconv, errors, io, time, runtime, unsafe and
// sync/atomic. Not strings, not golang.org/x/sys/unix, not os/exec, not
// nsinit's other packages: each would make Go run those initialisers first
// (docs/performance.md, "The init's memory"). What needs more (listing
// /proc for kept zombies and for the grace stop) comes in through Procs.
//
// Signals arrive through os/signal, except the four the Go runtime keeps
// from it (32, 33, 34 and SIGPROF), which a small assembly handler takes
// over (rawsig_*.go). The runtime's own preemption signal (SIGURG) is
// switched off at link time (see the Makefile) so that a SIGURG the init
// receives is one somebody sent, and forwarding it is safe.
//
// The files: supervise.go (Run, the loop, starting the command),
// signals.go and rawsig_*.go (catching and forwarding), reaper.go and
// drain.go (reaping, the end of the run), spawn_linux.go (the fork).
package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Config says what the init supervises and how. The zero value plus Argv
// is a tini-like init.
type Config struct {
	// Argv is the command to start; Argv[0] is looked up in PATH.
	Argv []string
	// Adopt, when non-zero, is an existing child to supervise instead of
	// starting Argv (a restored agent adopts its restored command).
	Adopt int
	// Keep lists children that must never be reaped: the zombies of a
	// restored image belong to the image, not to the init. Needs Procs.
	Keep map[int]bool
	// Subreaper makes the init a child subreaper, so that orphans of the
	// command come back to it. Run turns it on by itself when not PID 1.
	Subreaper bool
	// SignalGroup forwards signals to the command's process group (tini -g).
	SignalGroup bool
	// ParentDeathSignal, when non-zero, is delivered to the init when its
	// parent dies (tini -p).
	ParentDeathSignal syscall.Signal
	// ZeroExitCodes are exit codes of the command reported as 0 (tini -e).
	ZeroExitCodes []int
	// WarnOnReap prints "Reaped zombie process with pid=N" to Log for
	// every child reaped that is not the command (tini -w).
	WarnOnReap bool
	// Grace, when non-zero, makes a stop graceful: once the command has
	// exited after a SIGTERM (forwarded to it), every remaining descendant
	// gets SIGTERM, has up to Grace to exit, then gets SIGKILL; the init
	// exits as soon as none is left (drain.go). Zero: the init exits with
	// the command, as tini does. Needs Procs.
	Grace time.Duration
	// Ignored are the signals that were ignored when nsinit started, and
	// Blocked its signal mask (bit N-1 for signal N). The command starts
	// with exactly these, as it would have without nsinit in between (the Go
	// runtime changed both in nsinit itself). BlockedKnown false: the
	// original mask could not be read.
	Ignored      []syscall.Signal
	Blocked      uint64
	BlockedKnown bool
	// ForwardSIGURG says SIGURG may be forwarded: true only when the binary
	// was built with async preemption off, so the runtime never raises it.
	ForwardSIGURG bool
	// Procs lists processes from /proc (internal/procfs's Reader); only
	// Keep and Grace need it.
	Procs Procs
	// Log receives diagnostics (nil: stderr).
	Log io.Writer
	// Setup, when set, runs once the signals are taken, before the
	// command starts (the agent opens its restore socket there).
	Setup func() error
	// Started, when set, runs once the init is set up - signals taken,
	// command started or adopted - just before it starts waiting. A
	// restored agent puts its namespace's ns_last_pid back from here, after
	// the runtime threads of its start-up have taken their pids.
	Started func() error
}

// Procs is what the supervisor reads of /proc.
type Procs interface {
	// SelfChildren lists the caller's children, live or dead.
	SelfChildren() []int
	// Descendants lists the processes below pid, parents first.
	Descendants(pid int) []int
}

// Exit statuses for a command that could not be started, as shells use them.
const (
	ExitNotFound      = 127
	ExitNotExecutable = 126
	ExitInitFailure   = 1
)

// Run supervises the command until it exits and returns the status nsinit
// must exit with: the command's exit code, 128+N when it was killed by
// signal N, 0 for a code listed in ZeroExitCodes. Orphans re-parented to the
// init are reaped as they die, whatever the command does.
func Run(cfg Config) int {
	log := cfg.Log
	if log == nil {
		log = os.Stderr
	}
	if (len(cfg.Keep) > 0 || cfg.Grace > 0) && cfg.Procs == nil {
		fmt.Fprintf(log, "nsinit: supervise: Keep and Grace need Procs\n")
		return ExitInitFailure
	}
	if err := setupProcess(&cfg); err != nil {
		fmt.Fprintf(log, "nsinit: %v\n", err)
		return ExitInitFailure
	}

	// Subscribe before the command exists, so that neither its SIGCHLD nor
	// a signal meant for it can be missed.
	sigs := make(chan os.Signal, 128)
	signal.Notify(sigs, append(signalsOf(notifySignals(cfg)), syscall.SIGCHLD)...)
	if err := catchRawSignals(sigs); err != nil {
		fmt.Fprintf(log, "nsinit: %v\n", err)
		return ExitInitFailure
	}
	if !cfg.ForwardSIGURG {
		// Never let the runtime's preemption signal reach the command.
		signal.Ignore(syscall.SIGURG)
	}

	if cfg.Setup != nil {
		if err := cfg.Setup(); err != nil {
			fmt.Fprintf(log, "nsinit: %v\n", err)
			return ExitInitFailure
		}
	}
	child := cfg.Adopt
	if child == 0 {
		pid, code, err := start(cfg)
		if err != nil {
			fmt.Fprintf(log, "nsinit: %v\n", err)
			return code
		}
		child = pid
	}

	if cfg.Started != nil {
		if err := cfg.Started(); err != nil {
			fmt.Fprintf(log, "nsinit: %v\n", err)
			return ExitInitFailure
		}
	}
	r := reaper{child: child, keep: cfg.Keep, procs: cfg.Procs}
	if cfg.WarnOnReap {
		r.warn = log
	}
	return r.loop(sigs, cfg, log)
}

// loop reaps on SIGCHLD and forwards every other signal until the command
// is gone, and returns nsinit's exit status.
func (r *reaper) loop(sigs chan os.Signal, cfg Config, log io.Writer) int {
	// The command may already be gone: reap before the first wait.
	if st, done := r.reapAll(); done {
		return exitCode(st, cfg.ZeroExitCodes)
	}
	stopping := false // a SIGTERM came: drain the descendants after the command
	for s := range sigs {
		sig := s.(syscall.Signal)
		if sig == syscall.SIGCHLD {
			if st, done := r.reapAll(); done {
				if stopping {
					r.drain(sigs, cfg.Grace, log)
				}
				return exitCode(st, cfg.ZeroExitCodes)
			}
			continue
		}
		if sig == syscall.SIGTERM && cfg.Grace > 0 {
			stopping = true
		}
		target := r.child
		if cfg.SignalGroup {
			target = -r.child
		}
		if err := syscall.Kill(target, sig); err != nil && err != syscall.ESRCH {
			fmt.Fprintf(log, "nsinit: forward %v to %d: %v\n", sig, target, err)
		}
	}
	panic("unreachable")
}

// setupProcess applies the process-wide settings of cfg before the command
// starts.
func setupProcess(cfg *Config) error {
	if cfg.ParentDeathSignal != 0 {
		if err := prctl(syscall.PR_SET_PDEATHSIG, uintptr(cfg.ParentDeathSignal)); err != nil {
			return fmt.Errorf("set parent-death signal: %w", err)
		}
	}
	// Outside PID 1, orphans would go to some other reaper and never be
	// seen; a subreaper gets them back, which is what an init is for.
	if os.Getpid() != 1 {
		cfg.Subreaper = true
	}
	if cfg.Subreaper {
		if err := prctl(prSetChildSubreaper, 1); err != nil {
			return fmt.Errorf("become child subreaper: %w", err)
		}
	}
	return nil
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER (linux/prctl.h), which
// package syscall predates.
const prSetChildSubreaper = 36

func prctl(option, arg uintptr) error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, option, arg, 0, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// start starts the command in its own process group, in the foreground of
// the controlling terminal when stdin is one, with nsinit's standard fds,
// environment and working directory. On failure it returns the exit status
// a shell would use (127 not found, 126 not executable).
func start(cfg Config) (pid, code int, err error) {
	if len(cfg.Argv) == 0 {
		return 0, ExitInitFailure, errors.New("no command to run")
	}
	path, err := lookPath(cfg.Argv[0])
	if err != nil {
		return 0, startFailureCode(err), fmt.Errorf("exec %s: %w", cfg.Argv[0], err)
	}
	attr := spawnAttr{
		path:           path,
		argv:           cfg.Argv,
		env:            os.Environ(),
		blocked:        cfg.Blocked,
		blockedUnknown: !cfg.BlockedKnown,
	}
	for _, s := range cfg.Ignored {
		attr.ignored |= 1 << (s - 1)
	}
	if fg, err := foregroundGroup(0); err == nil && fg == syscall.Getpgrp() {
		// stdin is our controlling terminal and we have its foreground:
		// hand it to the command, as a shell hands it to a foreground job.
		// Run in the background (`nsinit -- CMD &`), nsinit leaves the
		// terminal to whoever has it.
		attr.foreground = true
	}
	pid, err = spawn(attr)
	if err != nil {
		return 0, startFailureCode(err), fmt.Errorf("exec %s: %w", cfg.Argv[0], err)
	}
	return pid, 0, nil
}

func startFailureCode(err error) int {
	switch {
	case errors.Is(err, errNotFound), errors.Is(err, syscall.ENOENT):
		return ExitNotFound
	default:
		// EACCES, ENOEXEC, EISDIR...: found but cannot be executed.
		return ExitNotExecutable
	}
}

// exitCode turns the command's wait status into nsinit's exit status.
func exitCode(ws syscall.WaitStatus, zero []int) int {
	code := ShellStatus(ws)
	for _, z := range zero {
		if code == z {
			return 0
		}
	}
	return code
}

// ShellStatus is a wait status as a shell reports it: the exit code, or
// 128+N for a death by signal N.
func ShellStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
