package supervise

import (
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// drain ends a graceful stop (Config.Grace): the command has exited after
// a SIGTERM, and what it left behind - its descendants, orphans the init
// adopted included - must go too. Each gets SIGTERM (and SIGCONT, so that
// a stopped one can act on it); after grace, whatever is left gets SIGKILL.
// drain returns as soon as the init has no child left but the kept
// zombies: every descendant has a chain of parents up to a child of the
// init, so no child means no descendant.
//
// sigs is the init's signal channel: SIGCHLD wakes it to reap (and to
// signal descendants forked meanwhile); other signals are not forwarded
// any more, the command being gone.
func (r *reaper) drain(sigs <-chan os.Signal, grace time.Duration, log io.Writer) {
	signaled := map[int]bool{}
	sweep := func(sig syscall.Signal) {
		for _, pid := range r.procs.Descendants(os.Getpid()) {
			if sig == syscall.SIGKILL || !signaled[pid] {
				signaled[pid] = true
				if err := syscall.Kill(pid, sig); err != nil && err != syscall.ESRCH {
					fmt.Fprintf(log, "nsinit: stop pid %d with %v: %v\n", pid, sig, err)
				}
				if sig == syscall.SIGTERM {
					syscall.Kill(pid, syscall.SIGCONT)
				}
			}
		}
	}
	sig := syscall.SIGTERM
	sweep(sig)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for {
		r.reapAll()
		if r.onlyKeptLeft() {
			return
		}
		select {
		case s := <-sigs:
			if s == syscall.SIGCHLD {
				sweep(sig) // new descendants, or a kill that missed a fork
			}
		case <-deadline.C:
			sig = syscall.SIGKILL
			fmt.Fprintf(log, "nsinit: descendants still running %v after the command exited: SIGKILL\n", grace)
			sweep(sig)
		}
	}
}

// onlyKeptLeft says whether every child of the init is a kept zombie (or
// there is none).
func (r *reaper) onlyKeptLeft() bool {
	for _, pid := range r.procs.SelfChildren() {
		if !r.keep[pid] {
			return false
		}
	}
	return true
}
