package restorer

import (
	"unsafe"

	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// The block is the one piece of memory the Go restorer and the builder
// processes share (they are CLONE_VM children of the restorer). It is
// mmap'ed, never Go heap: no Go pointers are ever stored in it, only
// integers and addresses inside the block itself. Builders read their steps
// from it and write results and futex words into it.

// header is at offset 0 of the block.
type header struct {
	cur       uint64 // index of the step whose turn it is
	goWake    uint32 // futex word the restorer sleeps on
	failed    uint32 // set by a builder whose step failed
	failStep  int64
	failErrno int64
	nsteps    int64
	base      uint64 // the block's own address, for sanity checks

	// The level-0 writer's check of a clone placed through the host
	// cursor (exec_hostcursor.go): the pidfd's fdinfo path, prefix filled by
	// Execute, and the text read from it.
	fdinfoPath [40]byte
	fdinfoBuf  [512]byte

	// zeros stays all zero: SIG_DFL sigaction, empty sigset, RLIMIT 0,
	// a futex word that never changes.
	zeros       [128]byte
	lastPIDPath [32]byte
	parkText    [24]byte // the host cursor at the start, as text
	parkLen     int64
	// restorerFD is a pidfd for the restorer (in the fd table every
	// builder shares), -1 for none: a builder that waits polls it now and
	// then, so that a restorer killed outright (SIGKILL) does not leave
	// builders waiting forever for a turn. committed is set once the
	// restore is handed over: parked tasks then wait without bound.
	restorerFD int32
	committed  uint32
	// leaving is 1 + the proc that took credentials an unprivileged user
	// could ptrace and is leaving the shared memory (exec or exit) while
	// holding the token; the restorer passes the token on once it is gone
	// (builder_linux.go, passOrLeave). 0 for none.
	leaving int64
	// private is 1 when the restorer keeps the memory it shares with the
	// builders non-dumpable for the whole restore (it holds CAP_SYS_PTRACE:
	// builder_linux.go, setnsVia). Builders then never make it dumpable,
	// and a builder refused a pidfd setns asks the restorer to open the
	// namespace files: assist is 1 + the index of that builder's step, 0
	// for none.
	private uint32
	assist  int64
	// leaveSecs is how long a waiting builder sleeps between two checks
	// that the restorer is still there (builder_linux.go, waitOrLeave).
	leaveSecs int64
	// keepFDs: a builder about to exec copies only the shared fds below
	// it into its private table (builder_linux.go, privateFDs); 0 copies
	// them all.
	keepFDs int64
}

// procRec is one proc's slot.
type procRec struct {
	wake      uint32 // futex word: the token for this proc's next step
	alive     uint32 // CLONE_CHILD_CLEARTID: the kernel zeroes it at exec/exit
	pidfd     int32  // CLONE_PIDFD: filled by the kernel, -1 before
	execErr   int32  // errno of a failed execve, 0 otherwise
	firstStep int64  // first step this proc performs, -1 for none
	selfPid   int64  // its pid in its own namespace (for kill(self))
	// hostPid: its level-0 pid when the kernel chose it, as its level-0
	// cloner's clone3 returned it (a keeper's maps are written by it).
	hostPid int64
	// capability sets for the exec payload (exec_creds.go); setCaps 0 leaves the
	// builder's own. capHdr and capData are capget/capset scratch space.
	setCaps, keepCaps      uint32
	capExact               uint32 // a zombie: capset permitted and effective too
	capLast                uint32 // /proc/sys/kernel/cap_last_cap
	capInh, capBnd, capAmb uint64
	capPrm, capEff         uint64
	capHdr                 [2]uint32 // version, pid
	capData                [6]uint32 // two halves of {effective, permitted, inheritable}
	// payload (addresses inside the block; 0 = none)
	path, argv, envp, cwd uint64
	root                  uint64 // chroot here before the exec (Options.Root)
	// mounts: nmounts mountActs to perform before the chroot (a mounter,
	// exec_mounts.go); mountFail: 1 + the one that failed; stx: scratch.
	mounts             uint64
	nmounts, mountFail int64
	stx                unix.Statx_t
	groups             uint64
	ngroups            int64
	uid, gid           [3]uint32 // real, effective, saved
	setCreds           uint32
	noGroups           uint32 // setgroups is denied in its user ns: skip it
	stopSelf           uint32 // park instead of exec (stopped payload)
	subreaper          uint32 // PR_SET_CHILD_SUBREAPER before the payload
	// controlFD is a restored agent's end of its control socket (in the
	// shared fd table, close-on-exec), -1 for other procs: the builder
	// dups it to agentconn.ControlFD for its exec (exec_agents.go).
	controlFD int32
	// markFD is the waiter mark (internal/waiter) for a proc that becomes a
	// waiter, -1 for others: the builder dups it to waiter.FD for its exec.
	markFD int32
	comm   [commLen + 1]byte // name of a zombie or parked task (exec_comm.go)
	// setStdio set: stdio are the fds (in the shared table, -1: keep the
	// restorer's) the builder dups to 0, 1, 2 for its exec (builder_stdio_linux.go).
	setStdio uint32
	stdio    [3]int32
}

// stepRec is one step in the block.
type stepRec struct {
	op        int64
	actor     int64
	nextSame  int64 // the next step of the same actor, -1 for none
	nextActor int64 // the actor of step i+1 (Restorer = -1; -2 after the last)
	into      int64 // proc whose pidfd names the pid ns to setns into, -1
	prewake   int64 // a proc to wake early (it spins until its turn), -1
	arg, arg2 int64
	waitPid   int64 // OpWait: the helper's pid in the actor's namespace
	child     int64 // OpClone: builderMain argument of the new task
	args      sys.CloneArgs
	setTID    [sys.MaxSetTID]int32 // pid_t, not u64 (internal/sys.SetTID)
	text      [24]byte             // OpLastPID: the number as text
	textLen   int64
	// OpLastPID: the proc whose level-0 pid the writer checks afterwards
	// (exec_hostcursor.go), -1 for none, and that pid.
	check, checkPid int64
	// OpUserMap: up to three files (setgroups, uid_map, gid_map) to write:
	// NUL-terminated path and text addresses in the block, text lengths;
	// a 0 path is skipped.
	fpath, ftext [3]uint64
	flen         [3]int64
	// mapProc: the proc whose files they are when the kernel chose its
	// level-0 pid (a keeper): the paths are made at run time from its
	// hostPid, in mpath; -1 otherwise. OpClone: hostPidOut 1 stores the
	// child's level-0 pid (clone3's result) in its hostPid.
	mapProc    int64
	mpath      [40]byte
	hostPidOut int64
	// OpHostname: the names (at most 64 bytes each, __NEW_UTS_LEN).
	host, domain       [64]byte
	hostLen, domainLen int64
	comm               [commLen + 1]byte // OpThread: the thread's name (exec_comm.go)
	named              uint32            // OpThread: futex word, 1 once it has it
	// A step that joins another proc's namespaces (into) and was refused
	// the pidfd setns: the namespace files the restorer opened for it, in
	// nsOrder, -1 for a kind not asked; nsErr is the restorer's errno;
	// nsOpened is the futex word the restorer sets to 1 when done.
	nsFD     [len(nsOrder)]int32
	nsErr    int64
	nsOpened uint32
	// OpThread: the thread's mailbox (builder_linux.go, serveThread). Its
	// task's builder puts a request in req (a step index, or reqCreds)
	// and bumps reqSeq; the thread does it, leaves the errno in reqErr
	// and bumps doneSeq. Both words are futexes.
	reqSeq, doneSeq uint32
	req, reqErr     int64
	// OpClone: the OpThread step of the actor's thread that clones (the
	// image's parent thread, stopped payload), -1 for the actor itself.
	byThread int64
	// OpSetpgid with Options.HostPIDsAny: the procs whose level-0 pids
	// are arg and arg2, read from their pidfds when the step runs
	// (hostpids.go), -1 for a number used as it is.
	argProc, arg2Proc int64
}

const (
	headerSize  = (unsafe.Sizeof(header{}) + 63) &^ 63
	procRecSize = (unsafe.Sizeof(procRec{}) + 15) &^ 15
	stepRecSize = (unsafe.Sizeof(stepRec{}) + 15) &^ 15
	// stackSize is each builder's stack: its code is nosplit and only
	// makes raw syscalls, so a little is plenty.
	stackSize = 16 << 10
	// threadArg marks a builderMain argument that starts a parked thread.
	threadArg = 1 << 40
)

// block describes the layout; base is set once mapped. Only the accessors
// below compute addresses, always inside the mapping.
type block struct {
	mem          []byte
	base         unsafe.Pointer
	nprocs       int
	nsteps       int
	procsOff     uintptr
	stepsOff     uintptr
	strOff, strN uintptr
	stacksOff    uintptr
	nstacks      int
	mountWhat    map[int][]act // each mounter's actions (exec_mounts.go)
}

//go:nosplit
func hdrAt(base unsafe.Pointer) *header { return (*header)(base) }

//go:nosplit
func procAt(base unsafe.Pointer, off uintptr, i int64) *procRec {
	return (*procRec)(unsafe.Add(base, off+uintptr(i)*procRecSize))
}

//go:nosplit
func stepAt(base unsafe.Pointer, off uintptr, i int64) *stepRec {
	return (*stepRec)(unsafe.Add(base, off+uintptr(i)*stepRecSize))
}

func (b *block) hdr() *header { return hdrAt(b.base) }

func (b *block) unmap() {
	if b.mem != nil {
		_ = unix.Munmap(b.mem)
		b.mem, b.base = nil, nil
	}
}
