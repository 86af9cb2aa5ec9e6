package restorer

import (
	"reflect"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/waiter"
	"golang.org/x/sys/unix"
)

// This file is the builder: the code every restored process runs from its
// birth until it becomes its payload, exits (zombies, helpers) or parks.
//
// It runs in CLONE_VM children of the Go restorer, on stacks inside the
// block, with every signal blocked. Contract for everything called from
// builderMain: //go:nosplit, raw syscalls only, no allocation, no write of a
// pointer to memory, no bounds-checked indexing, no use of g (the
// trampoline enters builderMain through its register-ABI entry, so no ABI
// wrapper with a stack check runs; the linker checks the nosplit chain
// fits its stack limit: builderMain's comment).

// builderEntry is the register-ABI entry of builderMain, which the
// trampoline calls in a new child.
var builderEntry = reflect.ValueOf(builderMain).Pointer()

// The block of the restore in progress, where builders find their records:
// set by each Execute (newBlock) before its first clone, read-only until it
// returns. Builders share the restorer's memory, so these are the same
// variables in every builder; executeMu keeps one Execute at a time in a
// process.
var (
	bBase     unsafe.Pointer
	bProcsOff uintptr
	bStepsOff uintptr
)

// setBuilderBlock points the builders at b.
func setBuilderBlock(b *block) {
	bBase, bProcsOff, bStepsOff = b.base, b.procsOff, b.stepsOff
}

const (
	futexWait  = 0
	futexWake  = 1
	sigSetmask = 2
	wALL       = 0x40000000
	// errHelperStatus marks a failure errno that is really a helper's
	// non-zero wait status (in the low 16 bits).
	errHelperStatus = 1 << 20
)

// zeroBuf is 128 zero bytes inside the header's padding area: an all-zero
// sigaction (SIG_DFL), an empty signal set, a futex word that never changes.
//
//go:nosplit
func zeroBuf(base unsafe.Pointer) uintptr { return uintptr(base) + unsafe.Offsetof(header{}.zeros) }

// builderMain is where every new builder starts (the trampoline calls
// it): a thread serves its task, a proc lives its steps (procMain). It
// only dispatches, with a frame as small as can be.
//
// Every call chain below it must fit the linker's nosplit limit (792
// bytes on amd64), also in a `go test -fuzz` binary, whose coverage
// instrumentation (counters and comparison hooks in every function of
// the package) makes its frames a sixth to a half bigger. The deepest
// chains - a proc's steps (procMain -> doStep -> setnsVia -> waitOrLeave
// -> RawSyscall6, or a thread's through serveThread) and a payload's last
// step (procMain -> lastStep -> prepareExec -> doMounts -> createLike ->
// RawSyscall) - keep their frames small: procMain and doStep hand what is
// not on those chains to functions of their own, and waitOrLeave makes
// its syscalls itself. docs/restore.md has the figures.
//
//go:nosplit
func builderMain(arg uintptr) {
	if arg&threadArg != 0 { // a thread: the rest of arg is its OpThread step
		th := stepAt(bBase, bStepsOff, int64(arg&^threadArg))
		nameThread(th)
		serveThread(bBase, th)
	}
	procMain(arg)
}

// procMain is a proc's life: its steps in turn, then its payload (or its
// death, or parking). Its frame is in the deepest nosplit chain
// (builderMain -> procMain -> doStep -> setnsVia -> waitOrLeave ->
// RawSyscall6), so everything but the steps' order lives in functions of
// its own, whose locals stay out of that frame.
//
//go:nosplit
//go:noinline
func procMain(arg uintptr) {
	base := bBase
	resetHandlers(zeroBuf(base))
	self := int64(arg)
	pr := procAt(base, bProcsOff, self)
	for i := pr.firstStep; i >= 0; {
		st := stepAt(base, bStepsOff, i)
		awaitTurn(base, pr, i)
		if st.op == int64(OpExit) || st.op == int64(OpPayload) {
			lastStep(base, pr, st, i, self)
		}
		var e uintptr
		if st.byThread >= 0 {
			// The image's parent thread forks the child: that thread does
			// the whole step (setns included: pid_for_children is per
			// thread), its task waits for it.
			e = delegate(base, stepAt(base, bStepsOff, st.byThread), i)
		} else {
			e = doStep(base, pr, st, i)
		}
		if e != 0 {
			fail(base, i, e)
			park(base)
		}
		advance(base, st, i)
		i = st.nextSame
	}
	park(base)
}

// resetHandlers is a proc's first act: CLONE_VM without CLONE_SIGHAND
// copied Go's handlers, so back to SIG_DFL (the sigaction at z) while
// every signal is still blocked (SIGKILL and SIGSTOP have no handler to
// reset: the kernel refuses them).
//
//go:nosplit
func resetHandlers(z uintptr) {
	for sig := uintptr(1); sig <= 64; sig++ {
		if sig != uintptr(unix.SIGKILL) && sig != uintptr(unix.SIGSTOP) {
			syscall.RawSyscall6(unix.SYS_RT_SIGACTION, sig, z, 0, 8, 0, 0)
		}
	}
}

// awaitTurn returns when it is step i's turn; a builder of a failed
// restore parks instead. It sleeps until then; woken early (prewake), it
// spins yielding.
//
//go:nosplit
func awaitTurn(base unsafe.Pointer, pr *procRec, i int64) {
	h := hdrAt(base)
	for spins := -1; ; {
		v := atomic.LoadUint32(&pr.wake)
		if atomic.LoadUint64(&h.cur) == uint64(i) || atomic.LoadUint32(&h.failed) != 0 {
			break
		}
		if spins >= 0 && spins < 20000 {
			spins++
			syscall.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			continue
		}
		if waitOrLeave(h, &pr.wake, v) {
			spins = 0 // woken: the turn is near, spin for it
		}
	}
	if atomic.LoadUint32(&h.failed) != 0 {
		park(base)
	}
}

// lastStep is a proc's last step i (st), OpExit or OpPayload: it dies,
// parks or execs, and never returns.
//
//go:nosplit
func lastStep(base unsafe.Pointer, pr *procRec, st *stepRec, i, self int64) {
	z := zeroBuf(base)
	if st.op == int64(OpExit) {
		exitCreds(base, pr, i) // a zombie's own: builder_creds_linux.go
		setName(&pr.comm)
		passOrLeave(base, st, i, self)
		die(z, st.arg)
	}
	if e := setSubreaper(pr); e != 0 {
		fail(base, i, e)
		park(base)
	}
	if pr.stopSelf != 0 {
		setName(&pr.comm) // before the restorer's SIGSTOP
		// The image's credentials, in every thread, as the last
		// thing before parking for good (stopCreds).
		if e := stopCreds(base, pr); e != 0 {
			fail(base, i, e)
			park(base)
		}
		advance(base, st, i)
		park(base)
	}
	// Credentials and the fd table while holding the token, so
	// no other builder's step runs meanwhile; the exec after it.
	e := prepareExec(pr)
	passOrLeave(base, st, i, self)
	execPayload(pr, z, e)
}

//go:nosplit
func doStep(base unsafe.Pointer, pr *procRec, st *stepRec, i int64) uintptr {
	switch st.op {
	case int64(OpClone):
		if st.into >= 0 {
			if e := setnsVia(base, st, i, sys.CLONE_NEWPID); e != 0 {
				return e
			}
		}
		r, e := clone3(uintptr(unsafe.Pointer(&st.args)), sys.CloneArgsSize, uintptr(st.child))
		if e == 0 && st.hostPidOut != 0 {
			procAt(base, bProcsOff, st.child).hostPid = int64(r)
		}
		if st.into >= 0 {
			if _, _, e2 := syscall.RawSyscall(unix.SYS_SETNS, uintptr(pr.pidfd), sys.CLONE_NEWPID, 0); e2 != 0 && e == 0 {
				return uintptr(e2)
			}
		}
		return e
	case int64(OpThread):
		_, e := clone3(uintptr(unsafe.Pointer(&st.args)), sys.CloneArgsSize, uintptr(st.child))
		if e == 0 {
			waitNamed(st)
		}
		return e
	case int64(OpSetPFC):
		if st.into < 0 {
			_, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, sys.CLONE_NEWPID, 0, 0)
			return uintptr(e)
		}
		return setnsVia(base, st, i, sys.CLONE_NEWPID)
	case int64(OpUnshare):
		if _, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, uintptr(st.arg), 0, 0); e != 0 {
			return uintptr(e)
		}
		return redumpable(st.arg)
	case int64(OpSetns):
		if e := setnsVia(base, st, i, uintptr(st.arg)); e != 0 {
			return e
		}
		return redumpable(st.arg)
	case int64(OpSetCreds):
		if _, _, e := syscall.RawSyscall(unix.SYS_SETRESGID, uintptr(st.arg2), uintptr(st.arg2), uintptr(st.arg2)); e != 0 {
			return uintptr(e)
		}
		if _, _, e := syscall.RawSyscall(unix.SYS_SETRESUID, uintptr(st.arg), uintptr(st.arg), uintptr(st.arg)); e != 0 {
			return uintptr(e)
		}
		// The uid change made the mm - shared by every builder and the
		// restorer - non-dumpable: right for a restorer that keeps it so
		// (private), otherwise undone as for redumpable.
		return redumpable(unix.CLONE_NEWUSER)
	case int64(OpUserMap):
		return writeUserMaps(base, st)
	case int64(OpHostname):
		return setHostname(st)
	case int64(OpSetsid):
		_, _, e := syscall.RawSyscall(unix.SYS_SETSID, 0, 0, 0)
		return uintptr(e)
	case int64(OpSubreaper):
		_, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1, 0)
		return uintptr(e)
	case int64(OpSetpgid):
		return setpgidStep(base, st)
	case int64(OpLastPID):
		if e := setLastPID(base, st); e != 0 || st.check < 0 {
			return e
		}
		return checkHostPID(base, st) // exec_hostcursor.go
	case int64(OpWait):
		return waitHelper(st)
	}
	return 0
}

// The steps below are doStep's leaves, out of its frame: doStep is in the
// deepest nosplit chain (builderMain's comment), and every local of any of
// its cases makes its one frame bigger.

// setpgidStep runs an OpSetpgid step; with kernel-chosen host pids a
// number may be a proc's, read from its pidfd now (hostpids.go).
//
//go:nosplit
func setpgidStep(base unsafe.Pointer, st *stepRec) uintptr {
	a, g := st.arg, st.arg2
	var e uintptr
	if st.argProc >= 0 {
		if a, e = hostPIDOf(base, st.argProc); e != 0 {
			return e
		}
	}
	if st.arg2Proc >= 0 {
		if g, e = hostPIDOf(base, st.arg2Proc); e != 0 {
			return e
		}
	}
	_, _, e2 := syscall.RawSyscall(unix.SYS_SETPGID, uintptr(a), uintptr(g), 0)
	return uintptr(e2)
}

// writeUserMaps writes an OpUserMap step's files.
//
//go:nosplit
func writeUserMaps(base unsafe.Pointer, st *stepRec) uintptr {
	for j := 0; j < 3; j++ {
		if st.fpath[j] == 0 {
			continue
		}
		path := uintptr(st.fpath[j])
		if st.mapProc >= 0 {
			mapPath(st, procAt(base, bProcsOff, st.mapProc).hostPid, j)
			path = uintptr(unsafe.Pointer(&st.mpath))
		}
		fd, _, e := syscall.RawSyscall6(unix.SYS_OPENAT, ^uintptr(99) /* AT_FDCWD */, path, unix.O_WRONLY|unix.O_CLOEXEC, 0, 0, 0)
		if e != 0 {
			return uintptr(e)
		}
		_, _, e = syscall.RawSyscall(unix.SYS_WRITE, fd, uintptr(st.ftext[j]), uintptr(st.flen[j]))
		syscall.RawSyscall(unix.SYS_CLOSE, fd, 0, 0)
		if e != 0 {
			return uintptr(e)
		}
	}
	return 0
}

// mapPath makes "/proc/PID/setgroups" (j 0), "uid_map" (1) or "gid_map"
// (2) of level-0 pid pid in st.mpath, NUL-terminated.
//
//go:nosplit
func mapPath(st *stepRec, pid int64, j int) {
	b := &st.mpath
	n := copy(b[:], "/proc/")
	var d [20]byte
	k := len(d)
	for {
		k--
		d[k] = byte('0' + pid%10)
		if pid /= 10; pid == 0 {
			break
		}
	}
	n += copy(b[n:], d[k:])
	n += copy(b[n:], [3]string{"/setgroups", "/uid_map", "/gid_map"}[j])
	b[n] = 0
}

// setHostname sets an OpHostname step's host and domain names.
//
//go:nosplit
func setHostname(st *stepRec) uintptr {
	if _, _, e := syscall.RawSyscall(unix.SYS_SETHOSTNAME, uintptr(unsafe.Pointer(&st.host)), uintptr(st.hostLen), 0); e != 0 {
		return uintptr(e)
	}
	_, _, e := syscall.RawSyscall(unix.SYS_SETDOMAINNAME, uintptr(unsafe.Pointer(&st.domain)), uintptr(st.domainLen), 0)
	return uintptr(e)
}

// setLastPID writes an OpLastPID step's number (or the header's parking
// number) to the ns_last_pid file the header names.
//
//go:nosplit
func setLastPID(base unsafe.Pointer, st *stepRec) uintptr {
	h := hdrAt(base)
	fd, _, e := syscall.RawSyscall6(unix.SYS_OPENAT, ^uintptr(99) /* AT_FDCWD */, uintptr(unsafe.Pointer(&h.lastPIDPath)), unix.O_WRONLY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return uintptr(e)
	}
	txt, n := uintptr(unsafe.Pointer(&st.text)), uintptr(st.textLen)
	if st.textLen < 0 {
		txt, n = uintptr(unsafe.Pointer(&h.parkText)), uintptr(h.parkLen)
	}
	_, _, e = syscall.RawSyscall(unix.SYS_WRITE, fd, txt, n)
	syscall.RawSyscall(unix.SYS_CLOSE, fd, 0, 0)
	return uintptr(e)
}

// waitHelper reaps an OpWait step's helper; a non-zero wait status is a
// failure (errHelperStatus).
//
//go:nosplit
func waitHelper(st *stepRec) uintptr {
	_, _, e := syscall.RawSyscall6(unix.SYS_WAIT4, uintptr(st.waitPid), uintptr(unsafe.Pointer(&st.arg2)), wALL, 0, 0, 0)
	if e != 0 {
		return uintptr(e)
	}
	if s := uint32(st.arg2); s != 0 {
		return errHelperStatus | uintptr(s&0xffff)
	}
	return 0
}

// setSubreaper makes a payload a child subreaper again when the image
// says it was one (the flag survives execve), as its first payload act:
// every helper and zombie of the plan has died by then (the planner's
// finish), so no orphan of the restore itself goes to it.
//
//go:nosplit
func setSubreaper(pr *procRec) uintptr {
	if pr.subreaper == 0 {
		return 0
	}
	_, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_CHILD_SUBREAPER, 1, 0)
	return uintptr(e)
}

// reqCreds is the request to a thread (serveThread) to take its task's
// image credentials.
const reqCreds = -1

// serveThread is a restored thread's life after it has its name: it waits
// for its task's requests (delegate) and performs each - a clone step, so
// that a child's parent is the thread that forked it in the image, or its
// credentials (stopCreds) - until a signal ends it. Before the commit it
// checks now and then that the restorer is still there (waitOrLeave).
//
//go:nosplit
func serveThread(base unsafe.Pointer, th *stepRec) {
	h := hdrAt(base)
	pr := procAt(base, bProcsOff, th.actor)
	seen := uint32(0)
	for {
		v := atomic.LoadUint32(&th.reqSeq)
		if v == seen {
			waitOrLeave(h, &th.reqSeq, v)
			continue
		}
		seen = v
		var e uintptr
		if r := atomic.LoadInt64(&th.req); r == reqCreds {
			if pr.setCreds != 0 {
				e = uintptr(setCreds(pr))
			}
		} else {
			e = doStep(base, pr, stepAt(base, bStepsOff, r), r)
		}
		atomic.StoreInt64(&th.reqErr, int64(e))
		atomic.AddUint32(&th.doneSeq, 1)
		syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&th.doneSeq)), futexWake, 1, 0, 0, 0)
	}
}

// delegate has thread th (its OpThread step) perform request req and
// returns the thread's errno. One request at a time: the task's builder
// is the only one that asks, and waits.
//
//go:nosplit
func delegate(base unsafe.Pointer, th *stepRec, req int64) uintptr {
	h := hdrAt(base)
	d := atomic.LoadUint32(&th.doneSeq)
	atomic.StoreInt64(&th.req, req)
	atomic.AddUint32(&th.reqSeq, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&th.reqSeq)), futexWake, 1, 0, 0, 0)
	for {
		v := atomic.LoadUint32(&th.doneSeq)
		if v != d {
			return uintptr(atomic.LoadInt64(&th.reqErr))
		}
		waitOrLeave(h, &th.doneSeq, v)
	}
}

// stopCreds gives a stopped payload (record pr) its image
// credentials in every thread - credentials are per thread, and a raw
// setresuid changes only the caller's - then in itself.
//
// It is the builder's last act before it parks for good in the memory it
// shares with the restorer and every other builder, which it cannot leave
// as an exec payload does (passOrLeave). A task that takes another uid of
// the restorer's own user namespace makes the restorer keep that memory
// non-dumpable for good (exec_private.go, keepPrivate, privateReason), so that
// uid fails the kernel's ptrace check on it; one inside a user namespace
// the restore created is out of reach of every process outside it anyway.
// The planner puts every payload step after every step that needs the
// memory dumpable (finish), so the kernel's own non-dumpable verdict on a
// uid change here harms nobody.
//
//go:nosplit
func stopCreds(base unsafe.Pointer, pr *procRec) uintptr {
	if pr.setCreds == 0 {
		return 0
	}
	for j := pr.firstStep; j >= 0; {
		st := stepAt(base, bStepsOff, j)
		if st.op == int64(OpThread) {
			if e := delegate(base, st, reqCreds); e != 0 {
				return e
			}
		}
		j = st.nextSame
	}
	return uintptr(setCreds(pr))
}

// redumpable undoes what entering another user namespace did to the mm
// every builder and the restorer share: the kernel made it non-dumpable
// (new credentials that are not a subset of the old ones), which refuses
// the others' pidfd setns (ptrace_may_access) and /proc access until reset.
//
//go:nosplit
func redumpable(flags int64) uintptr {
	if flags&unix.CLONE_NEWUSER == 0 || hdrAt(bBase).private != 0 {
		return 0
	}
	_, _, e := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, 1, 0)
	return uintptr(e)
}

// passOrLeave ends step i of a builder that is about to exec or die with
// its task's credentials. While the shared mm is dumpable, whoever owns
// those credentials passes the kernel's ptrace check on this process, and
// with it reads and writes the root restorer's memory. So a builder whose
// credential change made the mm non-dumpable (the kernel's own verdict: a
// uid or gid change) keeps the token - no other builder needs the mm
// dumpable meanwhile - and leaves: the restorer waits until it has left
// the shared memory (its CLONE_CHILD_CLEARTID word cleared by exec or
// exit), makes the mm dumpable again for the others, and passes the token
// on. A builder that kept root's ids passes the token at once, as before.
//
//go:nosplit
func passOrLeave(base unsafe.Pointer, st *stepRec, i, self int64) {
	h := hdrAt(base)
	if d, _, _ := syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE, 0, 0); d == 1 || h.private != 0 {
		advance(base, st, i)
		return
	}
	atomic.StoreInt64(&h.leaving, self+1)
	atomic.AddUint32(&h.goWake, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWake, 1<<30, 0, 0, 0)
}

// advance passes the token from step i to step i+1 and wakes its owner.
//
//go:nosplit
func advance(base unsafe.Pointer, st *stepRec, i int64) {
	h := hdrAt(base)
	atomic.StoreUint64(&h.cur, uint64(i+1))
	w := &h.goWake
	if st.nextActor >= 0 {
		w = &procAt(base, bProcsOff, st.nextActor).wake
	}
	atomic.AddUint32(w, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWake, 1<<30, 0, 0, 0)
	if st.prewake >= 0 {
		w = &procAt(base, bProcsOff, st.prewake).wake
		atomic.AddUint32(w, 1)
		syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWake, 1<<30, 0, 0, 0)
	}
}

//go:nosplit
func fail(base unsafe.Pointer, i int64, e uintptr) {
	h := hdrAt(base)
	h.failStep = i
	h.failErrno = int64(e)
	atomic.StoreUint32(&h.failed, 1)
	atomic.AddUint32(&h.goWake, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWake, 1<<30, 0, 0, 0)
}

// park waits (a stopped payload, a thread, a failed builder) until a
// signal ends it - or, before the restore is committed, until the
// restorer is gone.
//
//go:nosplit
func park(base unsafe.Pointer) {
	h := hdrAt(base)
	z := (*uint32)(unsafe.Pointer(&h.zeros[0])) // a word nobody changes
	for {
		waitOrLeave(h, z, 0)
	}
}

// leaveCheck is how often a waiting builder checks that the restorer is
// still there (seconds), in a restore of up to leaveWakes*leaveCheck procs.
// A larger restore makes its builders check less often (leaveCheckFor):
// every builder waits from its birth to its last step, so with a fixed
// period the checks of a restore of n procs, which lasts in proportion to
// n, would add up to n*n - at 10,000 procs a tenth of the whole restore
// (issue #14). leaveWakes bounds the checks of all builders together to
// about 500 a second, a constant share of the restore's time.
const (
	leaveCheck = 2 // seconds
	leaveWakes = 500
)

// leaveCheckFor is the period of the checks in a restore of n procs.
func leaveCheckFor(n int) int64 {
	return max(leaveCheck, int64(n/leaveWakes))
}

// waitOrLeave is one futex wait on w while it holds v, bounded by
// h.leaveSecs (leaveCheckFor) before the restore is committed; a builder that then finds
// the restorer gone exits (its work can never be finished, and nobody
// would roll it back). It says whether the wait ended by a wake (or a
// changed word) rather than by the bound: only a wake may start the
// caller's spin, or a thousand waiting builders would spin every
// leaveCheck seconds and starve the one whose turn it is.
//
// It is the bottom of the deepest nosplit chains (builderMain's comment),
// so it makes its raw syscalls itself, all through RawSyscall6 (RawSyscall
// is one more frame that calls it), with no helper of its own.
//
//go:nosplit
func waitOrLeave(h *header, w *uint32, v uint32) (woken bool) {
	if atomic.LoadUint32(&h.committed) != 0 {
		syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(v), 0, 0, 0)
		return true
	}
	ts := [2]int64{h.leaveSecs, 0}
	_, _, e := syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(v), uintptr(unsafe.Pointer(&ts)), 0, 0)
	if e != syscall.ETIMEDOUT {
		return true
	}
	// Is the restorer gone before committing? Its pidfd polls readable
	// (or was closed under us: POLLNVAL).
	if h.restorerFD < 0 || atomic.LoadUint32(&h.committed) != 0 {
		return false
	}
	pfd := uint64(uint32(h.restorerFD)) | uint64(unix.POLLIN)<<32 // struct pollfd
	ts = [2]int64{}                                               // do not wait (poll(2) is not on arm64)
	if n, _, _ := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0); n == 1 {
		syscall.RawSyscall6(unix.SYS_EXIT_GROUP, 0x7f, 0, 0, 0, 0, 0)
	}
	return false
}

// die terminates with raw wait status: exit code << 8, or death by signal
// (never a core dump: RLIMIT_CORE is 0 first).
//
//go:nosplit
func die(z uintptr, status int64) {
	if sig := uintptr(status & 0x7f); sig != 0 {
		syscall.RawSyscall6(unix.SYS_PRLIMIT64, 0, unix.RLIMIT_CORE, z, 0, 0, 0)
		syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, sigSetmask, z, 0, 8, 0, 0)
		pid, _, _ := syscall.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
		syscall.RawSyscall(unix.SYS_KILL, pid, sig, 0)
	}
	syscall.RawSyscall(unix.SYS_EXIT_GROUP, uintptr(status>>8)&0xff, 0, 0)
}

// prepareExec gives the builder the payload's credentials, working
// directory and fds (a private fd table for a restored agent's control
// socket or a waiter's mark); execPayload then execs. On failure the errno
// is recorded and the builder exits 127 without exec (the restorer sees
// the CLONE_CHILD_CLEARTID word cleared and the errno set).
//
//go:nosplit
func prepareExec(pr *procRec) syscall.Errno {
	var e syscall.Errno
	if pr.nmounts != 0 {
		// A container's mounts on the new root (builder_mounts_linux.go).
		if e = doMounts(bBase, pr); e != 0 {
			return e
		}
	}
	if pr.root != 0 {
		// Before the ids change: chroot needs CAP_SYS_CHROOT.
		if _, _, e = syscall.RawSyscall(unix.SYS_CHROOT, uintptr(pr.root), 0, 0); e != 0 {
			return e
		}
	}
	if pr.setCreds != 0 {
		if e = setCreds(pr); e != 0 { // ids and capability sets: builder_creds_linux.go
			return e
		}
	}
	if pr.cwd != 0 {
		if _, _, e = syscall.RawSyscall(unix.SYS_CHDIR, uintptr(pr.cwd), 0, 0); e != 0 {
			return e
		}
	}
	// A restored agent keeps its control socket, a waiter gets its mark,
	// a detached tree its own stdio: in a private copy of the fd table
	// (the shared one stays the restorer's).
	if e = privateFDs(); e != 0 {
		return e
	}
	if pr.controlFD >= 0 {
		if _, _, e = syscall.RawSyscall(unix.SYS_DUP3, uintptr(pr.controlFD), agentconn.ControlFD, 0); e != 0 {
			return e
		}
	}
	if pr.markFD >= 0 {
		if _, _, e = syscall.RawSyscall(unix.SYS_DUP3, uintptr(pr.markFD), waiter.FD, 0); e != 0 {
			return e
		}
	}
	if pr.setStdio != 0 {
		return dupStdio(pr) // builder_stdio_linux.go
	}
	return 0
}

// privateFDs gives the builder a private fd table holding the shared
// table's fds below keepFDs (exec_fds.go), closing the others, all
// close-on-exec: the pidfds of the restore above all, one a proc. Left
// shared, the exec itself would copy the whole table and then close every
// pidfd in it, one by one: a cost in proportion to the procs created so
// far, for every exec, which made the restore of n tasks cost n*n
// (issue #14). close_range(2) with CLOSE_RANGE_UNSHARE copies only the fds
// below its first argument. A kernel without it (before 5.9) copies the
// whole table as unshare(CLONE_FILES).
//
//go:nosplit
func privateFDs() syscall.Errno {
	if k := hdrAt(bBase).keepFDs; k > 0 {
		_, _, e := syscall.RawSyscall(unix.SYS_CLOSE_RANGE, uintptr(k), uintptr(^uint32(0)), unix.CLOSE_RANGE_UNSHARE)
		if e == 0 {
			return 0
		}
	}
	_, _, e := syscall.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_FILES, 0, 0)
	return e
}

// execPayload becomes the task's recorded program, after prepareExec
// returned e.
//
//go:nosplit
func execPayload(pr *procRec, z uintptr, e syscall.Errno) {
	if e != 0 {
		goto failed
	}
	syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, sigSetmask, z, 0, 8, 0, 0)
	_, _, e = syscall.RawSyscall(unix.SYS_EXECVE, uintptr(pr.path), uintptr(pr.argv), uintptr(pr.envp))
failed:
	pr.execErr = int32(e)
	syscall.RawSyscall(unix.SYS_EXIT_GROUP, 127, 0, 0)
}

// nsOrder is the order in which setnsVia joins namespace files the
// restorer opened: the order setns through a pidfd applies them in (the
// kernel's commit_nsset), user namespaces first.
var nsOrder = [...]uintptr{
	unix.CLONE_NEWUSER, unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC,
	sys.CLONE_NEWPID, unix.CLONE_NEWCGROUP, unix.CLONE_NEWNET, unix.CLONE_NEWTIME,
}

// setnsVia joins the namespaces flags of proc st.into (step i's) through
// its pidfd. That setns needs the kernel's ptrace right over the task
// (docs/kernel.md F8.4), and a restorer that holds CAP_SYS_PTRACE keeps the
// memory every builder shares non-dumpable (private), so that no user who
// matches a builder's credentials can read or write it: a builder that
// entered a child user namespace lacks that right over its fellow
// builders. It then hands its step to the restorer, which opens the
// namespace files (its right is enough), and joins them through those:
// setns through an nsfs file asks for capabilities in the namespace, not
// for ptrace rights.
//
//go:nosplit
func setnsVia(base unsafe.Pointer, st *stepRec, i int64, flags uintptr) uintptr {
	h := hdrAt(base)
	fd := procAt(base, bProcsOff, st.into).pidfd
	_, _, e := syscall.RawSyscall(unix.SYS_SETNS, uintptr(fd), flags, 0)
	if e != syscall.EPERM || h.private == 0 {
		return uintptr(e)
	}
	atomic.StoreInt64(&h.assist, i+1)
	atomic.AddUint32(&h.goWake, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWake, 1<<30, 0, 0, 0)
	for atomic.LoadUint32(&st.nsOpened) == 0 {
		waitOrLeave(h, &st.nsOpened, 0)
	}
	var err uintptr
	if st.nsErr != 0 {
		err = uintptr(st.nsErr)
	}
	for j := 0; j < len(nsOrder); j++ {
		nfd := st.nsFD[j]
		if nfd < 0 {
			continue
		}
		if err == 0 {
			if _, _, e := syscall.RawSyscall(unix.SYS_SETNS, uintptr(nfd), nsOrder[j], 0); e != 0 {
				err = uintptr(e)
			}
		}
		syscall.RawSyscall(unix.SYS_CLOSE, uintptr(nfd), 0, 0)
	}
	return err
}
