package supervise

import (
	"fmt"
	"io"
	"syscall"
	"unsafe"
)

// reaper collects dead children: the command (whose status it remembers)
// and every orphan the kernel hands to the init.
type reaper struct {
	child int
	// keep are children that must stay zombies (a restored image's).
	keep map[int]bool
	// procs lists the children when some are kept.
	procs Procs
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
		pid, ws, errno := wait4NoHang(-1)
		if errno == syscall.EINTR {
			continue
		}
		if pid <= 0 || errno != 0 {
			return status, childDone
		}
		r.reaped(pid)
		if pid == r.child {
			status, childDone = ws, true
		}
	}
}

// wait4NoHang is wait4(pid, &status, WNOHANG, NULL) as a raw system call.
// With WNOHANG it never blocks, so the scheduler need not hear of it: a
// burst of thousands of orphans is reaped without the runtime's
// bookkeeping around every call (entersyscall/exitsyscall, which also lets
// sysmon hand the P to another thread in the middle of the burst when a
// goroutine is waiting, the signal forwarder for one).
func wait4NoHang(pid int) (int, syscall.WaitStatus, syscall.Errno) {
	var status int32
	r, _, errno := syscall.RawSyscall6(syscall.SYS_WAIT4, uintptr(pid), uintptr(unsafe.Pointer(&status)), syscall.WNOHANG, 0, 0, 0)
	return int(r), syscall.WaitStatus(status), errno
}

// reapExcept reaps dead children one pid at a time, skipping the kept
// ones: wait4(-1) cannot be told to leave some zombies alone.
func (r *reaper) reapExcept() (status syscall.WaitStatus, childDone bool) {
	for _, pid := range r.procs.SelfChildren() {
		if r.keep[pid] {
			continue
		}
		got, ws, errno := wait4NoHang(pid)
		for errno == syscall.EINTR {
			got, ws, errno = wait4NoHang(pid)
		}
		if got > 0 && errno == 0 {
			r.reaped(got)
		}
		if got == r.child && errno == 0 {
			status, childDone = ws, true
		}
	}
	return status, childDone
}
