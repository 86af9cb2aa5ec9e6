package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
	"golang.org/x/sys/unix"
)

// newDumpGuard makes the eBPF consistency guard; nil until
// cmd/nsinit/guard.go sets it in an init().
var newDumpGuard func() (dump.Guard, error)

func init() { register("dump", "record a process tree into an image", runDump) }

func runDump(args []string) int {
	fs := flag.NewFlagSet("dump", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nsinit dump -t PID -D DIR [--leave-stopped | --kill] [--retries N] [--unchecked]")
		fs.PrintDefaults()
	}
	pid := fs.Int("t", 0, "level-0 `pid` of the root of the tree")
	dir := fs.String("D", "", "image `directory` (created if missing)")
	leaveStopped := fs.Bool("leave-stopped", false, "leave the tree frozen (cgroup) or stopped (ptrace) after the dump")
	kill := fs.Bool("kill", false, "kill the tree after a successful dump")
	retries := fs.Int("retries", 3, "attempts after one that raced with the tree")
	unchecked := fs.Bool("unchecked", false, "dump without the eBPF consistency guard (image marked unchecked)")
	verbose := fs.Bool("v", false, "print progress to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pid <= 0 || *dir == "" || fs.NArg() != 0 || (*leaveStopped && *kill) {
		fs.Usage()
		return 2
	}
	opts := dump.Options{Retries: *retries, LeaveStopped: *leaveStopped}
	if *retries == 0 {
		opts.Retries = -1 // no retry (Options treats 0 as the default)
	}
	if *verbose {
		opts.Log = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "nsinit dump: "+f+"\n", a...) }
	}
	switch {
	case newDumpGuard == nil && !*unchecked:
		fmt.Fprintf(os.Stderr, "nsinit dump: cannot check the dump for races: this nsinit has no consistency guard\n(use --unchecked to dump anyway)\n")
		return 1
	case newDumpGuard == nil:
		fmt.Fprintf(os.Stderr, "nsinit dump: warning: unchecked dump (this nsinit has no consistency guard): a race with the tree would go unnoticed\n")
	case !*unchecked:
		// Loaded while the tree is found and frozen; a failure ends the
		// dump once the tree runs again.
		opts.LoadGuard = newDumpGuard
	default:
		// A guard that loads is still used; one that does not is no
		// reason to refuse.
		var guardErr error
		if opts.Guard, guardErr = newDumpGuard(); guardErr != nil {
			opts.Guard = nil
			fmt.Fprintf(os.Stderr, "nsinit dump: warning: unchecked dump (%v): a race with the tree would go unnoticed\n", guardErr)
		}
	}
	tr, err := dump.Dump(*pid, opts)
	if errors.Is(err, dump.ErrNoGuard) {
		fmt.Fprintf(os.Stderr, "nsinit dump: cannot check the dump for races: %v\n(use --unchecked to dump anyway)\n", err)
		return 1
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit dump: %v\n", err)
		return 1
	}
	if err := imagefile.Write(*dir, tr); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit dump: %v\n", err)
		return 1
	}
	if *kill {
		// Children first; a pid namespace init takes its members with it.
		for i := len(tr.Tasks) - 1; i >= 0; i-- {
			if err := unix.Kill(tr.Tasks[i].PIDs[0], unix.SIGKILL); err != nil && err != unix.ESRCH {
				fmt.Fprintf(os.Stderr, "nsinit dump: kill pid %d: %v\n", tr.Tasks[i].PIDs[0], err)
				return 1
			}
		}
	}
	return 0
}
