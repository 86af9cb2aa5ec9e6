package restorer

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Features are what the running kernel can do that changes the plan. They
// are probed once, before planning, and handed to the planner in Options:
// a plan never changes during execution.
type Features struct {
	// MultiLevelSetTID: clone3 accepts a set_tid entry for every level
	// (docs/kernel.md F2.1, since 5.5), so one clone places a task at all
	// its levels without ns_last_pid cursors. Both the 6.18 dev kernel and
	// Debian's 6.1 have it (the earlier "one entry only" finding was an
	// array of u64 where the kernel reads pid_t, see internal/sys.SetTID).
	MultiLevelSetTID bool
	// PidMax is /proc/sys/kernel/pid_max as the restorer sees it (0:
	// unknown). On 6.1 it bounds every namespace's cursor.
	PidMax int
	// SetgroupsDenied: the restorer cannot call setgroups(2) in its own
	// user namespace - the namespace denies it (/proc/self/setgroups is
	// "deny", as `unshare -r` leaves it), or the restorer lacks CAP_SETGID
	// (an agent restoring for another uid, agent/listen.go): tasks of the
	// ambient user namespace keep the groups they inherit.
	SetgroupsDenied bool
	// NoSetTID: the kernel has no clone3 with set_tid (Linux 5.5), which
	// every restore needs (ENOSYS or E2BIG from the probe).
	NoSetTID bool
	// MissingNS lists the namespace kinds the kernel lacks (no
	// /proc/self/ns/NAME, e.g. time namespaces before 5.6).
	MissingNS []pstree.NSKind
}

// ProbeFeatures asks the kernel. The set_tid probe creates nothing: it asks
// for pid 1 of a new namespace at level 1 and for pid 1 at the caller's own
// level, which is always taken (the caller's namespace has an init), so a
// kernel that takes two entries fails in pid allocation with EEXIST, and
// one that does not fails the argument check with EINVAL.
func ProbeFeatures() Features {
	e := probeSetTID()
	f := Features{MultiLevelSetTID: e == unix.EEXIST, NoSetTID: e == unix.ENOSYS || e == unix.E2BIG}
	for _, k := range pstree.AllNSKinds() {
		if _, err := os.Stat("/proc/self/ns/" + k.ProcName()); os.IsNotExist(err) {
			f.MissingNS = append(f.MissingNS, k)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		f.PidMax, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if b, err := os.ReadFile("/proc/self/setgroups"); err == nil {
		f.SetgroupsDenied = strings.TrimSpace(string(b)) == "deny"
	}
	if !hasCap(unix.CAP_SETGID) {
		f.SetgroupsDenied = true
	}
	return f
}

func probeSetTID() syscall.Errno {
	tids := [2]int32{1, 1} // pid_t, innermost first: pid 1 of the new ns, pid 1 here
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
