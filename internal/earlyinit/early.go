// Package earlyinit runs a plain `nsinit [-s] [-g] [-w] [-v] -- CMD` from
// its init function, before Go initialises the packages the rest of nsinit
// links, and holds what the process started with: the rt0 entry point
// (rt0_amd64.s) and the signal state it records.
//
// Go runs every linked package's initialiser before main: protobuf's
// descriptors, cilium/ebpf's, crypto's, compression's, net's. They touch
// pages of the binary an init never needs again (docs/performance.md, "The
// init's memory"). Go initialises packages in the order of their import
// paths among those whose imports are done, so a package that imports only
// os, os/signal, syscall, fmt, strconv, errors, io, time, runtime, unsafe
// and sync/atomic (and internal/supervise, which imports no more) is
// initialised right after os/signal, before any of them. Its init function
// runs the whole init and exits. Importing strings (and so flag, os/exec,
// golang.org/x/sys/unix or any other nsinit package) would let compression,
// crypto and encoding initialise first: keep this package's imports as
// they are (TestEarlyImports).
//
// Only command lines this package reads completely run here: switches
// among -s, -g, -w and -v (alone or combined, -sgw), then "--" and the
// command, plus tini's environment variables. Everything else (-e, -p,
// --grace, --listen, -h, subcommands, a command without "--") is left to
// main, which parses it in full (cmd/nsinit, internal/cliflag), as are a
// restored agent and a restored waiter (their file descriptors are open)
// and a PID 1 that may be the machine's init (internal/machine). The
// supervisor is the same either way: internal/supervise.
package earlyinit

import (
	"os"
	"runtime"
	"syscall"

	"github.com/nsinit/nsinit/internal/supervise"
)

func init() {
	cfg, verbose, ok := plainInit(os.Args[1:])
	if !ok {
		return // main runs
	}
	// One P is plenty for a supervisor and keeps the runtime's thread count
	// and memory at their smallest (main's runInit does the same).
	runtime.GOMAXPROCS(1)
	Prepare(&cfg, verbose, false)
	// The supervisor runs on the main goroutine, which the runtime keeps
	// on the main thread until the initialisers are done: each wake-up
	// hands the P to that thread. Measured, running it on another
	// goroutine instead changed neither the memory nor the thread count.
	os.Exit(supervise.Run(cfg))
}

// plainInit returns the settings of a plain init this package runs, ok
// false when main must run instead.
func plainInit(args []string) (cfg supervise.Config, verbose int, ok bool) {
	cfg, verbose, ok = ParsePlain(args)
	if !ok || maybeMachineInit() || fdOpen(agentControlFD) || fdOpen(int(waiterFD)) {
		return cfg, verbose, false
	}
	return cfg, verbose, true
}

// ParsePlain reads a plain init's command line: switches among -s, -g, -w
// and -v, each alone or combined (-sgw, -vv), as internal/cliflag reads
// them, then "--" and the command. ok false for anything else. Exported
// for cmd/nsinit's test that it reads what internal/cliflag reads.
func ParsePlain(args []string) (cfg supervise.Config, verbose int, ok bool) {
	cfg.Subreaper, cfg.SignalGroup, verbose = EnvSubreaper(), EnvSignalGroup(), EnvVerbosity()
	for i, a := range args {
		if a == "--" {
			cfg.Argv = args[i+1:]
			return cfg, verbose, len(cfg.Argv) > 0
		}
		if len(a) < 2 || a[0] != '-' {
			return cfg, verbose, false
		}
		for _, c := range a[1:] {
			switch c {
			case 's':
				cfg.Subreaper = true
			case 'g':
				cfg.SignalGroup = true
			case 'w':
				cfg.WarnOnReap = true
			case 'v':
				verbose++
			default:
				return cfg, verbose, false
			}
		}
	}
	return cfg, verbose, false
}

// agentControlFD is internal/agentconn's ControlFD: a restored agent's
// control socket (TestEarlyConstants).
const agentControlFD = 62

// fdOpen says whether file descriptor fd is open.
func fdOpen(fd int) bool {
	_, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0)
	return e != syscall.EBADF
}

// procPidInitIno is the inode number of the initial pid namespace
// (PROC_PID_INIT_INO, include/linux/proc_ns.h), fixed since Linux 3.8.
const procPidInitIno = 0xEFFFFFFC

// maybeMachineInit says whether this process may be the init of the whole
// machine, which internal/machine sets up first: PID 1 in the initial pid
// namespace, or PID 1 without a /proc to tell (the kernel starts the
// machine's init without one). A container's PID 1 is in a pid namespace
// of its own, whichever /proc it sees.
func maybeMachineInit() bool {
	if os.Getpid() != 1 {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		return true
	}
	return st.Ino == procPidInitIno
}
