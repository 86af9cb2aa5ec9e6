// Package pstree is the in-memory model of a dumped process tree: what
// `nsinit dump` produces, what the image file stores and what the restorer
// plans from.
//
// It is normalised once, at the boundary (the image decoder), so that no
// consumer has to re-derive anything from raw /proc text:
//
//   - Every vector of pids (PIDs, TIDs, PGIDs, SIDs) runs OUTERMOST FIRST, as
//     NSpid does: index 0 is the level of the procfs the dump read (normally
//     the host's pid namespace, "level 0"), the last index is the task's own
//     pid namespace. Only internal/sys reverses it for clone3's set_tid.
//   - Namespaces are referred to by an image-local ID (1, 2, ...), never by an
//     inode number (inode numbers are recycled by the kernel).
//   - Tasks are listed parents before children.
package pstree

import "fmt"

// FormatMajor and FormatMinor version the image. A reader refuses another
// major version; a newer minor only adds fields that older readers ignore.
const (
	FormatMajor = 1
	FormatMinor = 6 // 1: net namespace contents, ambient namespaces; 2: comm; 3: tasks waiting for children; 4: parent threads, child subreapers; 5: the dumping kernel, root_elsewhere, state_recorded; 6: mounts
)

// NSKind is one kind of Linux namespace.
type NSKind int

// The namespace kinds, in the order of the nsKinds table.
const (
	PidNS NSKind = iota
	PidForChildrenNS
	UserNS
	NetNS
	UTSNS
	IPCNS
	MntNS
	CgroupNS
	TimeNS
	numNSKinds
)

// nsKind is one row of the namespace table: its /proc/PID/ns/ name.
type nsKind struct {
	procName string
}

// nsKinds is the one table that names every namespace kind. pid_for_children
// is not a namespace of its own but the pid namespace a task's next children
// are born in (it differs from PidNS after setns(CLONE_NEWPID)).
var nsKinds = [numNSKinds]nsKind{
	PidNS:            {"pid"},
	PidForChildrenNS: {"pid_for_children"},
	UserNS:           {"user"},
	NetNS:            {"net"},
	UTSNS:            {"uts"},
	IPCNS:            {"ipc"},
	MntNS:            {"mnt"},
	CgroupNS:         {"cgroup"},
	TimeNS:           {"time"},
}

// AllNSKinds lists every kind, in table order.
func AllNSKinds() []NSKind {
	ks := make([]NSKind, numNSKinds)
	for i := range ks {
		ks[i] = NSKind(i)
	}
	return ks
}

// ProcName is the kind's file name under /proc/PID/ns/.
func (k NSKind) ProcName() string {
	if k < 0 || k >= numNSKinds {
		return fmt.Sprintf("nskind(%d)", int(k))
	}
	return nsKinds[k].procName
}

func (k NSKind) String() string { return k.ProcName() }

// ParseNSKind is the inverse of ProcName.
func ParseNSKind(s string) (NSKind, error) {
	for i, k := range nsKinds {
		if k.procName == s {
			return NSKind(i), nil
		}
	}
	return 0, fmt.Errorf("unknown namespace kind %q", s)
}

// NSID is an image-local namespace identifier. 0 means "none/unknown" (for
// example a namespace the dump could not see, such as the parent of the
// dump's own pid namespace).
type NSID uint32

// NSSet holds the namespace of each kind a task is in.
type NSSet [numNSKinds]NSID

// IDMapEntry is one line of a uid_map or gid_map.
type IDMapEntry struct {
	Inside, Outside, Count uint32
}

// Namespace is one namespace the tree uses.
type Namespace struct {
	ID   NSID
	Kind NSKind
	// Parent is the parent namespace for pid and user namespaces
	// (NS_GET_PARENT), 0 when it is outside what the dump could see.
	Parent NSID
	// Owner is the user namespace that owns this namespace (NS_GET_USERNS),
	// 0 for a user namespace the dump cannot see.
	Owner NSID
	// Level is the depth of a pid namespace below level 0 (the pid namespace
	// of the procfs the dump read): 0, 1, 2, ...
	Level int
	// LastPID is a pid namespace's ns_last_pid cursor at dump time, as seen
	// from inside it; 0 when unknown.
	LastPID int
	// User namespaces: the maps as read from outside (the dumper's view) and
	// whether setgroups is allowed.
	UIDMap, GIDMap   []IDMapEntry
	SetgroupsAllowed bool
	OwnerUID         uint32
	// UTS namespaces.
	Hostname, Domainname string
	// Ambient marks the dumper's own namespace of that kind: the tree
	// inherited it from outside. Restore uses its own instead of creating
	// one, and the dump records no contents for an ambient net namespace.
	Ambient bool
	// Net namespaces that are not ambient: interfaces (in ifindex order)
	// and routes (see NetRoute).
	Links  []NetLink
	Routes []NetRoute
	// Mounts of a mount namespace that is not ambient (minor 6; nil in
	// older images and for a namespace whose mounts were not read).
	Mounts []Mount
}

// TaskState is what a task was doing at dump time.
type TaskState int

// Task states. Running and sleeping tasks are both Live: the difference is
// not something a restore reproduces.
const (
	Live TaskState = iota
	Stopped
	Zombie
)

func (s TaskState) String() string {
	switch s {
	case Live:
		return "live"
	case Stopped:
		return "stopped"
	case Zombie:
		return "zombie"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Creds are a task's credentials as seen from the dumper's user namespace.
type Creds struct {
	UID, EUID, SUID, FSUID                 uint32
	GID, EGID, SGID, FSGID                 uint32
	Groups                                 []uint32
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64
}

// Thread is a non-leader thread of a task.
type Thread struct {
	// TIDs is the thread's id at every level, outermost first (NSpid of
	// /proc/PID/task/TID/status).
	TIDs  []int
	State TaskState
	// Comm is the thread's command name (see Task.Comm).
	Comm string
}

// Task is one process (thread group) of the tree.
type Task struct {
	// PIDs is NSpid: the pid at every level, outermost first. len(PIDs)-1 is
	// the level of the task's pid namespace.
	PIDs []int
	// PPID is the parent's pid at level 0; 0 for the root of the tree.
	PPID int
	// ParentTID is the level-0 tid of the parent's thread whose child the
	// task is (/proc/PPID/task/TID/children: the thread that forked it,
	// or the one that adopted it): PPID for the leader, a tid of one of
	// the parent's Threads otherwise; 0 when not recorded (the root, an
	// image of minor < 4, a kernel without the children files).
	ParentTID int
	// PGIDs and SIDs are NSpgid and NSsid, outermost first, one entry per
	// level of the task. An entry is 0 at levels where the leader has no pid
	// (the leader lives in an ancestor namespace); index 0 names the leader.
	// The leader may be dead: its pid number stays reserved while members
	// use it, and no Task of the tree has it. 0 at index 0 is the kernel's
	// session or group 0, which no process leads: tasks of a machine's init
	// that never called setsid/setpgid are in it.
	PGIDs, SIDs []int
	State       TaskState
	// ExitStatus is a zombie's raw wait status (/proc/PID/stat field 52):
	// exit code << 8, or the terminating signal (| 0x80 for a core dump).
	ExitStatus int
	Threads    []Thread
	NS         NSSet
	Creds      Creds
	// Comm is the command name (/proc/PID/comm, the Name: of status; at
	// most 15 bytes, any bytes but NUL). Empty: not recorded (an image of
	// minor < 2), which restore and check do not care about.
	Comm      string
	Exe       string
	Argv, Env []string
	Cwd, Root string
	// RootElsewhere: the task's root directory is not the dumper's
	// (chroot, pivot_root in a container). Exe and Cwd are then paths in
	// that root; Root names it as the dumper saw it, often just "/".
	RootElsewhere bool
	// ChildSubreaper is PR_SET_CHILD_SUBREAPER; meaningful only when the
	// tree's SubreapersRecorded is set.
	ChildSubreaper bool
	// Agent marks a task that was an nsinit agent (nsinit as PID 1 of its
	// namespace).
	Agent bool
	// WaitsForChildren marks a live task that was blocked waiting for its
	// children (wait4, waitid, or a shell's sigsuspend/pause) and had no
	// zombie child: a shell at `wait`, `unshare -f`, a launcher. Restore
	// makes it wait again instead of running its program from the start,
	// which would launch its children a second time.
	WaitsForChildren bool
}

// Tree is a whole dumped tree.
type Tree struct {
	// Namespaces lists every namespace referenced by a task or by another
	// namespace.
	Namespaces []Namespace
	// Tasks lists parents before children; Tasks[0] is the root.
	Tasks []Task
	// Checked says the dump was verified race-free (eBPF counters unchanged
	// while the tree was read); false for an unchecked dump.
	Checked bool
	// SubreapersRecorded says every task's ChildSubreaper was read (an
	// eBPF task iterator, bpf.Subreapers); false: unknown (images of minor
	// < 4, dumps without eBPF), and every ChildSubreaper is false.
	SubreapersRecorded bool
	// Kernel is the release of the kernel the dump ran on and PidMax its
	// kernel.pid_max ("" and 0: unknown, images of minor < 5).
	Kernel string
	PidMax int
	// StateRecorded says `nsinit dump --state` also recorded each live
	// task's memory, registers and files (DIR/state.img, package state;
	// minor 5): a restore must bring them back or refuse.
	StateRecorded bool
}

// MarkSubreapers records which tasks are child subreapers: the live ones
// whose level-0 pid is in set (bpf.Subreapers). A zombie's flag means
// nothing any more (its children went to their new parents when it
// died), so it is not recorded.
func (tr *Tree) MarkSubreapers(set map[int]bool) {
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		t.ChildSubreaper = t.State != Zombie && set[t.PIDs[0]]
	}
	tr.SubreapersRecorded = true
}

// Level is the level of the task's own pid namespace.
func (t *Task) Level() int { return len(t.PIDs) - 1 }

// PID is the task's pid at level 0.
func (t *Task) PID() int { return t.PIDs[0] }

// InnerPID is the task's pid in its own pid namespace.
func (t *Task) InnerPID() int { return t.PIDs[len(t.PIDs)-1] }

// Namespace returns the namespace with the given ID, or nil.
func (tr *Tree) Namespace(id NSID) *Namespace {
	for i := range tr.Namespaces {
		if tr.Namespaces[i].ID == id {
			return &tr.Namespaces[i]
		}
	}
	return nil
}

// Task returns the task whose level-0 pid is pid, or nil.
func (tr *Tree) Task(pid int) *Task {
	for i := range tr.Tasks {
		if tr.Tasks[i].PIDs[0] == pid {
			return &tr.Tasks[i]
		}
	}
	return nil
}
