package restorer

import (
	"errors"
	"os"
	"strings"

	"github.com/nsinit/nsinit/internal/probe"
	"github.com/nsinit/nsinit/internal/procfs"
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

// ProbeFeatures asks the kernel, through the probes `nsinit check` prints
// (internal/probe).
func ProbeFeatures() Features {
	e := probe.SetTID()
	f := Features{MultiLevelSetTID: e == nil, NoSetTID: errors.Is(e, unix.ENOSYS) || errors.Is(e, unix.E2BIG)}
	for _, k := range pstree.AllNSKinds() {
		if _, err := os.Stat("/proc/self/ns/" + k.ProcName()); os.IsNotExist(err) {
			f.MissingNS = append(f.MissingNS, k)
		}
	}
	f.PidMax, _ = procfs.PidMax()
	if b, err := os.ReadFile("/proc/self/setgroups"); err == nil {
		f.SetgroupsDenied = strings.TrimSpace(string(b)) == "deny"
	}
	if !hasCap(unix.CAP_SETGID) {
		f.SetgroupsDenied = true
	}
	return f
}
