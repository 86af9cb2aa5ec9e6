package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/state"
)

// newDumpGuard makes the eBPF consistency guard; nil until
// cmd/nsinit/guard.go sets it in an init().
var newDumpGuard func() (dump.Guard, error)

// readSubreapers says which processes are child subreapers (level-0
// pids); nil until cmd/nsinit/guard.go sets it. dump records them (not
// with --unchecked, which loads no eBPF at all), check compares them;
// without it (or when it fails: no eBPF, not in the host pid namespace)
// the image says they are unknown.
var readSubreapers func() (map[int]bool, error)

// readSignals reads the signal handlers of processes for dump --state
// (an eBPF task iterator); nil until cmd/nsinit/guard.go sets it, and not
// used with --unchecked: a task with handlers is refused then.
var readSignals state.Signals

func init() { register("dump", "record a process tree into an image", runDump) }

func runDump(args []string) int {
	var (
		pid                             int
		dir                             string
		leaveRunning, leaveStopped, kil bool
		retries                         = 3
		unchecked, withState            bool
		logOpt                          diagOptions
	)
	fs := newFlags("nsinit dump",
		"nsinit dump -t PID -D DIR [--state] [--leave-running | --leave-stopped | --kill] [--retries N] [--unchecked]\n"+
			"                   [-o FILE] [--log-format text|json] [-v] [--progress]",
		"Records the tree rooted at PID, with its nested pid namespaces, into DIR/pstree.img.\n"+
			"The tree keeps running afterwards unless --leave-stopped or --kill (unlike criu dump,\n"+
			"which kills it unless -R).")
	fs.Int(&pid, "t,tree", "PID", "level-0 pid of the root of the tree")
	fs.String(&dir, "D,images-dir", "DIR", "image directory (created if missing)")
	fs.Bool(&leaveRunning, "R,leave-running", "let the tree run on after the dump (the default)")
	fs.Bool(&leaveStopped, "s,leave-stopped", "leave the tree frozen (cgroup) or stopped (ptrace) after the dump")
	fs.Bool(&kil, "kill", "kill the tree after a successful dump")
	fs.Int(&retries, "retries", "N", "attempts after one that raced with the tree")
	fs.Bool(&withState, "state", "also record what runs in each live task (memory, registers, files: docs/state.md), so that restore continues it")
	fs.Bool(&unchecked, "unchecked", "dump without the eBPF consistency guard (image marked unchecked)")
	logOpt.addFlags(fs, "log what the dump does")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	switch {
	case pid <= 0:
		return fs.Fail("-t/--tree PID is required")
	case dir == "":
		return fs.Fail("-D/--images-dir DIR is required")
	case len(fs.Args()) != 0:
		return fs.Fail("unexpected argument %q", fs.Args()[0])
	case btoi(leaveRunning)+btoi(leaveStopped)+btoi(kil) > 1:
		return fs.Fail("--leave-running, --leave-stopped and --kill exclude each other")
	case logOpt.bad() != "":
		return fs.Fail("%s", logOpt.bad())
	}
	d, err := openDiag("nsinit dump", logOpt, dir, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit dump: %v\n", err)
		return exitStatus(err)
	}
	defer d.close()
	opts := dump.Options{Retries: retries, LeaveStopped: leaveStopped}
	if retries == 0 {
		opts.Retries = -1 // no retry (Options treats 0 as the default)
	}
	opts.Log = func(f string, a ...any) { d.logf(1, f, a...) }
	prog := newProgress("nsinit dump", "", logOpt.progress)
	total := 0
	opts.Progress = func(stage string, n int) {
		if stage == "found" {
			total = n
		}
		prog.update(stage, n, total)
	}
	// --unchecked means no guard at all, even where it would load: the
	// image then says so (checked: false), and a dump that cannot load the
	// guard (inside a container's pid namespace, say) behaves the same
	// everywhere.
	if !unchecked {
		opts.Subreapers = readSubreapers
	}
	switch {
	case unchecked:
		d.logf(1, "unchecked dump: a race with the tree would go unnoticed")
	case newDumpGuard == nil:
		err := fmt.Errorf("this nsinit has no consistency guard")
		d.errorf("cannot check the dump for races: %v\n(use --unchecked to dump anyway)", err)
		return exitStatus(err)
	default:
		// Loaded while the tree is found and frozen; a failure ends the
		// dump (dump.ErrNoGuard) once the tree runs again.
		opts.LoadGuard = newDumpGuard
	}
	if withState {
		// Recorded while the tree is frozen; with --kill it dies frozen,
		// so it cannot run on past what was recorded.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			d.errorf("%v", err)
			return exitStatus(err)
		}
		signals := readSignals
		if unchecked {
			signals = nil // no eBPF at all, as for the guard
		}
		opts.State = func(tr *pstree.Tree, onTracer func(func())) error {
			return state.Record(dir, "/proc", tr, onTracer, signals)
		}
	}
	write := func(tr *pstree.Tree) error { return imagefile.Write(dir, tr) }
	if kil {
		// The image is written while the tree is still frozen, then the
		// tree is killed frozen: no task runs between its read and its
		// death, and a tree whose image failed is left running.
		// Without --kill it is written after the thaw, so the tree
		// stays frozen no longer than the read.
		opts.Write, opts.KillFrozen = write, true
	}
	t0 := time.Now()
	tr, err := dump.Dump(pid, opts)
	prog.done()
	if errors.Is(err, dump.ErrNoGuard) {
		d.errorf("cannot check the dump for races: %v\n(use --unchecked to dump anyway)", err)
		return exitStatus(err)
	}
	if err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if !kil {
		if err := write(tr); err != nil {
			d.errorf("%v", err)
			return exitStatus(err)
		}
	}
	d.logf(1, "wrote %d tasks to %s; the dump took %v", len(tr.Tasks), dir, time.Since(t0).Round(time.Millisecond))
	return 0
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
