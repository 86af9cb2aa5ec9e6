package restorer

import (
	"syscall"
	"unsafe"

	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// Features are what the running kernel can do that changes the plan. They
// are probed once, before planning, and handed to the planner in Options:
// a plan never changes during execution.
type Features struct {
	// MultiLevelSetTID: clone3 accepts a set_tid entry for every level
	// (kernel-facts F2.1), so one clone places a task at all its levels
	// without ns_last_pid cursors. The project's 6.18 dev kernel refuses
	// any set_tid_size >= 2 with EINVAL (docs/restore.md).
	MultiLevelSetTID bool
}

// ProbeFeatures asks the kernel. The set_tid probe creates nothing: it asks
// for pid 1 of a new namespace at level 1 and for pid 1 at the caller's own
// level, which is always taken (the caller's namespace has an init), so a
// kernel that takes two entries fails in pid allocation with EEXIST, and
// one that does not fails the argument check with EINVAL.
func ProbeFeatures() Features {
	return Features{MultiLevelSetTID: probeSetTID() == unix.EEXIST}
}

func probeSetTID() syscall.Errno {
	tids := [2]uint64{1, 1} // innermost first: pid 1 of the new ns, pid 1 here
	args := sys.CloneArgs{
		Flags:      sys.CLONE_NEWPID,
		ExitSignal: uint64(unix.SIGCHLD),
		SetTID:     uint64(uintptr(unsafe.Pointer(&tids[0]))),
		SetTIDSize: 2,
	}
	r, _, e := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), sys.CloneArgsSize, 0)
	switch {
	case e != 0:
		return e
	case r == 0:
		// Cannot happen (pid 1 is taken); never run Go code in a child.
		syscall.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	default:
		var ws unix.WaitStatus
		unix.Kill(int(r), unix.SIGKILL)
		unix.Wait4(int(r), &ws, 0, nil)
	}
	return 0
}
