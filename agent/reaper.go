package agent

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// reaper collects dead children: the command (whose status it remembers)
// and every orphan the kernel hands to the init.
type reaper struct {
	child int
	// keep are children that must stay zombies (a restored image's).
	keep map[int]bool
	// warn, when set, gets tini -w's line for every other child reaped.
	warn io.Writer
}

// reaped notes that pid was reaped.
func (r *reaper) reaped(pid int) {
	if r.warn != nil && pid != r.child {
		fmt.Fprintf(r.warn, "nsinit: Reaped zombie process with pid=%d\n", pid)
	}
}

// reapAll reaps every child that is dead now. It reports the command's wait
// status once the command itself has been reaped. It loops until no dead
// child is left, so a SIGCHLD that coalesced many deaths (or arrived while
// the previous batch was being reaped) loses nothing.
func (r *reaper) reapAll() (status syscall.WaitStatus, childDone bool) {
	if len(r.keep) > 0 {
		return r.reapExcept()
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return status, childDone
		}
		r.reaped(pid)
		if pid == r.child {
			status, childDone = ws, true
		}
	}
}

// reapExcept reaps dead children one pid at a time, skipping the kept
// ones: wait4(-1) cannot be told to leave some zombies alone.
func (r *reaper) reapExcept() (status syscall.WaitStatus, childDone bool) {
	for _, pid := range children() {
		if r.keep[pid] {
			continue
		}
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		for err == syscall.EINTR {
			got, err = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
		if got > 0 && err == nil {
			r.reaped(got)
		}
		if got == r.child && err == nil {
			status, childDone = ws, true
		}
	}
	return status, childDone
}

// children lists the pids of this process's children, live or dead. The
// kernel keeps children per thread, so every thread's list is read.
func children() []int {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(field); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
