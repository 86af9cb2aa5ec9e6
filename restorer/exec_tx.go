package restorer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// tx owns every process Execute creates (one owner of rollback): committed, or
// rolled back.
type tx struct {
	p              *Plan
	b              *block
	committed      bool
	resetSubreaper bool
	private        bool  // keepPrivate made the shared memory non-dumpable
	lastStep       []int // last step of each proc
	hostCursor     int   // host ns_last_pid before the restore, -1 unknown
	links          map[int]*agentLink
	mark           int // the waiter mark (internal/waiter), -1 for none
	agentTimeout   time.Duration
	el             *execLinks // exec_comm.go
	ctx            context.Context
	deadline       time.Time // of the whole restore (ExecOptions.Timeout)
	selfFD         int       // the pidfd in hdr().restorerFD, -1 for none
	aliveAt        time.Time // of the last checkAlive
	pid0           []int     // each proc's level-0 pid, from the verification (hostpids.go)
}

// aliveEvery is how often run looks for a builder that died. checkAlive
// reads a word of every proc, and the wait in run ends far more often
// than its bound (the Go runtime's preemption signal interrupts the raw
// futex wait): checked at every wake, a restore of n procs spent time in
// proportion to n*n on it (issue #14).
const aliveEvery = 50 * time.Millisecond

// watchRestorer gives the builders a pidfd for this process, so that
// they notice when it is gone (builder_linux.go, waitOrLeave).
func (t *tx) watchRestorer() {
	t.selfFD = -1
	h := t.hdr()
	h.restorerFD = -1
	if fd, err := unix.PidfdOpen(os.Getpid(), 0); err == nil {
		t.selfFD = fd
		h.restorerFD = int32(fd)
	}
}

// wakeRestorer makes run look at the state again now, not at its next
// periodic check.
func (t *tx) wakeRestorer() {
	h := t.hdr()
	atomic.AddUint32(&h.goWake, 1)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWake, 1<<30, 0, 0, 0)
}

// expired is the error of a wait that must end: the restore was cancelled
// (ErrInterrupted) or its deadline passed; nil otherwise.
func (t *tx) expired() error {
	if t.ctx.Err() != nil {
		return fmt.Errorf("%w: %v", ErrInterrupted, context.Cause(t.ctx))
	}
	if time.Now().After(t.deadline) {
		return fmt.Errorf("no progress before the deadline: %w", ErrTimeout)
	}
	return nil
}

func (t *tx) restoreHostCursor() {
	if t.hostCursor >= 0 {
		_ = writeLastPID(t.hostCursor)
	}
}

func (t *tx) hdr() *header { return hdrAt(t.b.base) }

func (t *tx) proc(i int) *procRec { return procAt(t.b.base, t.b.procsOff, int64(i)) }

// run drives the plan: it performs the restorer's own steps when their turn
// comes and otherwise sleeps until a builder wakes it, a builder fails, a
// builder dies, or the deadline passes.
func (t *tx) run() error {
	h := t.hdr()
	n := len(t.p.Steps)
	for {
		cur := int(atomic.LoadUint64(&h.cur))
		if atomic.LoadUint32(&h.failed) != 0 {
			return t.stepError(int(h.failStep), uintptr(h.failErrno))
		}
		if t.ctx.Err() != nil {
			return t.expired()
		}
		if cur >= n {
			if err := t.waitPayloads(); err != nil {
				return err
			}
			return t.greetAgents(t.agentTimeout)
		}
		if s := &t.p.Steps[cur]; s.Actor == Restorer {
			if err := t.restorerStep(cur); err != nil {
				return fmt.Errorf("step %d (%s): %w", cur, t.p.describe(s), err)
			}
			advanceGo(t.b.base, t.b.stepsOff, int64(cur))
			continue
		}
		v := atomic.LoadUint32(&h.goWake)
		if int(atomic.LoadUint64(&h.cur)) != cur {
			continue
		}
		if a := atomic.LoadInt64(&h.assist); a != 0 {
			atomic.StoreInt64(&h.assist, 0)
			t.openNamespaces(int(a - 1))
			continue
		}
		if l := atomic.LoadInt64(&h.leaving); l != 0 {
			if err := t.passForLeaver(cur, int(l-1)); err != nil {
				return err
			}
			continue
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("step %d (%s by %s): %w", cur, t.p.describe(&t.p.Steps[cur]), t.p.name(t.p.Steps[cur].Actor), err)
		}
		if now := time.Now(); now.Sub(t.aliveAt) >= aliveEvery {
			t.aliveAt = now
			if err := t.checkAlive(); err != nil {
				return err
			}
		}
		// A raw wait keeps this thread's P: the runtime has no reason to
		// start a new thread (which would take a host pid) meanwhile.
		ts := unix.NsecToTimespec(int64(50 * time.Millisecond))
		unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWait, uintptr(v), uintptr(unsafe.Pointer(&ts)), 0, 0)
	}
}

// openNamespaces opens, for step i, the namespace files of the proc the
// step joins, which its builder was refused through the pidfd
// (builder_linux.go, setnsVia), and hands them over in the step's record.
func (t *tx) openNamespaces(i int) {
	r := stepAt(t.b.base, t.b.stepsOff, int64(i))
	flags := uintptr(sys.CLONE_NEWPID)
	if r.op == int64(OpSetns) {
		flags = uintptr(r.arg)
	}
	if err := t.openNamespaceFiles(r, flags); err != nil {
		for j, fd := range r.nsFD {
			if fd >= 0 {
				unix.Close(int(fd))
				r.nsFD[j] = -1
			}
		}
		var errno unix.Errno
		if !errors.As(err, &errno) {
			errno = unix.EPERM
		}
		r.nsErr = int64(errno)
	}
	atomic.StoreUint32(&r.nsOpened, 1)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&r.nsOpened)), futexWake, 1, 0, 0, 0)
}

func (t *tx) openNamespaceFiles(r *stepRec, flags uintptr) error {
	if r.into < 0 || r.into >= int64(len(t.p.Procs)) {
		return unix.EINVAL
	}
	pidfd := int(atomic.LoadInt32(&t.proc(int(r.into)).pidfd))
	nspid, err := sys.FdinfoNSpid(pidfd)
	if err != nil {
		return err
	}
	if len(nspid) == 0 || nspid[0] <= 0 {
		return unix.ESRCH // not visible in the procfs at /proc
	}
	pid := nspid[0]
	for j, flag := range nsOrder {
		if flags&flag == 0 {
			continue
		}
		kind, ok := pstree.KindOfCloneFlag(uint64(flag))
		if !ok {
			return unix.EINVAL
		}
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, kind.ProcName()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		r.nsFD[j] = int32(fd)
	}
	// The pid still named the proc when its files were opened: it cannot
	// have been reused while the pidfd's task is alive.
	return unix.PidfdSendSignal(pidfd, 0, nil, 0)
}

// passForLeaver ends step cur for proc i, which took credentials that made
// the shared mm non-dumpable and is leaving it (builder_linux.go,
// passOrLeave): once it has, the mm is made dumpable again for the other
// builders' pidfd setns and /proc writes, and the token goes on.
func (t *tx) passForLeaver(cur, i int) error {
	if err := t.waitCleared(&t.proc(i).alive); err != nil {
		return fmt.Errorf("step %d: %s leaving the restorer's memory: %w", cur, t.p.name(i), err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("step %d: make the builders' memory dumpable again: %w", cur, err)
	}
	atomic.StoreInt64(&t.hdr().leaving, 0)
	advanceGo(t.b.base, t.b.stepsOff, int64(cur))
	return nil
}

// advanceGo is advance for the restorer's own steps.
func advanceGo(base unsafe.Pointer, stepsOff uintptr, i int64) {
	advance(base, stepAt(base, stepsOff, i), i)
}

// checkAlive fails when a proc died before its last step (killed from
// outside, or crashed).
func (t *tx) checkAlive() error {
	if t.lastStep == nil {
		t.lastStep = make([]int, len(t.p.Procs))
		for j, s := range t.p.Steps {
			if s.Actor >= 0 {
				t.lastStep[s.Actor] = j
			}
		}
	}
	var dead []int
	for i := range t.p.Procs {
		r := t.proc(i)
		if atomic.LoadInt32(&r.pidfd) >= 0 && atomic.LoadUint32(&r.alive) == 0 {
			dead = append(dead, i)
		}
	}
	// A proc clears its word only after passing the token of its last
	// step, so reading the current step after the words is race free. A
	// leaver (passOrLeave) clears it while still holding the token, but
	// names itself in leaving before: read after the words, it is seen.
	cur := int(atomic.LoadUint64(&t.hdr().cur))
	leaver := int(atomic.LoadInt64(&t.hdr().leaving)) - 1
	for _, i := range dead {
		if i == leaver {
			continue
		}
		if j := t.lastStep[i]; j >= cur {
			return fmt.Errorf("%s died before step %d (%s)", t.p.name(i), j, t.p.describe(&t.p.Steps[j]))
		}
	}
	return nil
}

func (t *tx) stepError(i int, e uintptr) error {
	if i < 0 || i >= len(t.p.Steps) {
		return fmt.Errorf("builder failure at step %d: errno %d", i, e)
	}
	s := &t.p.Steps[i]
	what := fmt.Sprintf("step %d (%s by %s)", i, t.p.describe(s), t.p.name(s.Actor))
	if e&errMisplaced != 0 {
		return t.misplaced(i, int(e&^errMisplaced))
	}
	if e&errHelperStatus != 0 {
		return fmt.Errorf("%s: helper exited with status %#x", what, e&0xffff)
	}
	err := error(unix.Errno(e))
	if s.Op == OpClone && err == unix.EEXIST {
		pids := t.p.Procs[s.Target].PIDs
		if h := holderOf(pids[0]); h != "" {
			return fmt.Errorf("%s: pid %d at level 0 is taken by %s: %w: %w", what, pids[0], h, ErrPIDTaken, err)
		}
		return fmt.Errorf("%s: one of pids %v (outermost first) is in use: %w: %w", what, pids, ErrPIDTaken, err)
	}
	if s.Op == OpThread && err == unix.EEXIST {
		return fmt.Errorf("%s: one of tids %v is in use: %w: %w", what, s.PIDs, ErrPIDTaken, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// restorerStep performs a step whose actor is the Go restorer.
func (t *tx) restorerStep(i int) error {
	s := &t.p.Steps[i]
	switch s.Op {
	case OpClone:
		return t.cloneRoot(i)
	case OpVerify:
		if err := t.verify(); err != nil {
			return err
		}
		return t.resolveWaits()
	case OpNetConfig:
		return t.netConfig(s)
	case OpLastPID:
		if s.Arg == ParkHostCursor {
			return writeLastPID(t.hostCursor)
		}
		return writeLastPID(s.Arg)
	case OpWait:
		fd := int(t.proc(s.Target).pidfd)
		// Polled, not a blocking wait: a helper that never exits must not
		// keep the restore from its deadline or from a cancel.
		for !pidfdReadable(fd) {
			if err := t.expired(); err != nil {
				return fmt.Errorf("reap %s: %w", t.p.name(s.Target), err)
			}
		}
		reaped, st, err := sys.WaitPidfd(fd, 0)
		if err != nil || !reaped {
			return fmt.Errorf("reap %s: %w", t.p.name(s.Target), err)
		}
		if st != 0 {
			return fmt.Errorf("%s exited with status %#x", t.p.name(s.Target), int(st))
		}
		return nil
	case OpKill:
		r := t.proc(s.Target)
		if t.p.Options.Payload == PayloadExec && s.Arg == int(unix.SIGSTOP) {
			// a stopped task of the image: stop it once it runs its payload
			if err := t.waitCleared(&r.alive); err != nil {
				return err
			}
		}
		if err := sys.PidfdKill(int(r.pidfd), unix.Signal(s.Arg)); err != nil {
			return err
		}
		return t.waitSignalled(s.Target, unix.Signal(s.Arg))
	}
	return fmt.Errorf("the restorer cannot perform %v", s.Op)
}

// pidfdReadable waits up to 50 ms for the process of pidfd to exit and
// says whether it has.
func pidfdReadable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 50)
	return err == nil && n > 0
}

// writeLastPID sets the restorer's own pid namespace cursor (level 0).
var writeLastPID = procfs.WriteLastPID

// cloneRoot creates the root task from a locked thread with every signal
// blocked, so the child starts with all signals blocked.
func (t *tx) cloneRoot(i int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := dropInheritableCaps(); err != nil {
		return err
	}
	old := sys.BlockAllSignals()
	r := stepAt(t.b.base, t.b.stepsOff, int64(i))
	_, e := clone3(uintptr(unsafe.Pointer(&r.args)), sys.CloneArgsSize, uintptr(r.child))
	sys.RestoreSignals(old)
	if e != 0 {
		return t.stepError(i, e)
	}
	return nil
}
