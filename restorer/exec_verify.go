package restorer

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// verify checks every placement through the pidfds (F9.1): fdinfo NSpid
// read through the host procfs is race free. Threads are checked through
// /proc/<tid>/status (their task is parked, so they cannot go away).
func (t *tx) verify() error {
	for i := range t.p.Procs {
		want := t.p.Procs[i].PIDs
		got, err := t.placedAt(i) // hostpids.go
		if err != nil {
			return fmt.Errorf("verify %s: %w", t.p.name(i), err)
		}
		if len(got) != len(want) {
			return fmt.Errorf("verify %s: placed at %v", t.p.name(i), got)
		}
		for l := range want {
			if want[l] != 0 && got[l] != want[l] && !(l == 0 && t.p.Options.HostPIDsAny) {
				err := fmt.Errorf("verify %s: placed at %v: wrong pid %d at level %d", t.p.name(i), got, got[l], l)
				if l == 0 {
					return t.hostPIDError(err, want[0])
				}
				return err
			}
		}
	}
	for _, s := range t.p.Steps {
		if s.Op != OpThread {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", t.hostPID(s.Actor), s.PIDs[0]))
		if err != nil {
			return t.hostPIDError(fmt.Errorf("verify thread %v of %s: %w", s.PIDs, t.p.name(s.Actor), err), s.PIDs[0])
		}
		if got := procfs.StatusField(st, "NSpid"); got != joinInts(s.PIDs) {
			return fmt.Errorf("verify thread %v of %s: placed at %s", s.PIDs, t.p.name(s.Actor), got)
		}
	}
	return nil
}

// resolveWaits fills in, for each helper whose pid the kernel chose in its
// reaper's namespace (a 0 in the plan, see Proc.PIDs), the number the
// reaper's wait4 names, read from the helper's pidfd. Every wait comes
// after the verification, and a builder reads its step only once it has
// the token, which this restorer step passes on.
func (t *tx) resolveWaits() error {
	for i := t.p.Verify + 1; i < len(t.p.Steps); i++ {
		s := &t.p.Steps[i]
		r := stepAt(t.b.base, t.b.stepsOff, int64(i))
		if s.Op != OpWait || s.Actor < 0 {
			continue
		}
		// A reaper at level 0 names the kernel's pid with HostPIDsAny.
		l := len(t.p.Procs[s.Actor].PIDs) - 1
		if r.waitPid != 0 && !(l == 0 && t.p.Options.HostPIDsAny) {
			continue
		}
		got, err := sys.FdinfoNSpid(int(t.proc(s.Target).pidfd))
		if err == nil && l >= len(got) {
			err = fmt.Errorf("placed at %v, no pid at level %d", got, l)
		}
		if err != nil {
			return fmt.Errorf("pid of %s for %s to reap: %w", t.p.name(s.Target), t.p.name(s.Actor), err)
		}
		r.waitPid = int64(got[l])
	}
	return nil
}

// hostPIDError classifies a wrong level-0 placement. The precheck found
// the wanted pid free, so an unrelated fork took it during the restore
// (ErrHostRace, retried; ErrPIDTaken too), naming the process that holds
// it when there still is one.
func (t *tx) hostPIDError(err error, pid int) error {
	h := holderOf(pid)
	if h == "" || t.ours(pid) {
		return fmt.Errorf("%w: pid %d at level 0 was taken, and no process outside the restore holds it now: %w: %w", err, pid, ErrHostRace, ErrPIDTaken)
	}
	return fmt.Errorf("%w: pid %d at level 0 is taken by %s: %w: %w", err, pid, h, ErrHostRace, ErrPIDTaken)
}

// ours says whether level-0 pid belongs to a proc this restore created.
func (t *tx) ours(pid int) bool {
	for i := range t.p.Procs {
		if fd := t.proc(i).pidfd; fd >= 0 {
			if got, err := sys.FdinfoNSpid(int(fd)); err == nil && got[0] == pid {
				return true
			}
		}
	}
	return false
}

// waitPayloads waits until every builder whose last step leaves the
// restorer's memory has left it (its CLONE_CHILD_CLEARTID word cleared):
// exec payloads, and tasks that exit. Passing on the turn token is the last
// thing they do in that memory, not the last thing they run: returning
// before they are gone let the restorer's memory (their stacks) be reused
// under a task still dying - it died of SIGSEGV instead of its recorded
// signal. Image zombies are then awaited until /proc shows them as zombies,
// so what the caller reads is final. Exec failures are reported.
func (t *tx) waitPayloads() error {
	for _, s := range t.p.Steps {
		switch {
		case s.Op == OpExit:
		case s.Op == OpPayload && t.p.Options.Payload == PayloadExec:
		default:
			continue
		}
		r := t.proc(s.Actor)
		if err := t.waitCleared(&r.alive); err != nil {
			return fmt.Errorf("final step of %s: %w", t.p.name(s.Actor), err)
		}
		if s.Op == OpExit {
			if ti := t.p.Procs[s.Actor].Task; ti >= 0 && t.p.Tree.Tasks[ti].State == pstree.Zombie {
				if err := t.waitSignalled(s.Actor, unix.SIGKILL); err != nil {
					return err
				}
			}
			continue
		}
		if e := atomic.LoadInt32(&r.execErr); e != 0 {
			if f := atomic.LoadInt64(&r.mountFail); f > 0 && int(f) <= len(t.b.mountWhat[s.Actor]) {
				return fmt.Errorf("%s, re-creating its mount namespace on %s: %s: %w", t.p.name(s.Actor), t.p.Options.Root,
					t.b.mountWhat[s.Actor][f-1].what, unix.Errno(e))
			}
			tk := &t.p.Tree.Tasks[t.p.Procs[s.Actor].Task]
			return fmt.Errorf("exec payload of %s (%s): %w", t.p.name(s.Actor), tk.Exe, unix.Errno(e))
		}
		if err := t.waitExecDone(t.hostPID(s.Actor)); err != nil {
			return fmt.Errorf("exec payload of %s: %w", t.p.name(s.Actor), err)
		}
	}
	return nil
}

// waitExecDone waits until the exec of level-0 pid has set up the new
// program: its command line is there. The cleared CLONE_CHILD_CLEARTID
// word only says that the old mm was dropped; the name and the arguments
// come later in the exec, and whoever reads /proc right after the restore
// (nsinit check, a test, a user) must see the program, not a builder
// half-way through its execve. A task that exited or died meanwhile is
// done too.
func (t *tx) waitExecDone(pid int) error {
	dir := "/proc/" + strconv.Itoa(pid)
	for {
		if b, err := os.ReadFile(dir + "/cmdline"); err != nil || len(b) > 0 {
			return nil
		}
		if b, err := os.ReadFile(dir + "/stat"); err != nil || procfs.StatState(b) == 'Z' {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("pid %d: no command line after its exec: %w", pid, err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (t *tx) waitCleared(w *uint32) error {
	for {
		v := atomic.LoadUint32(w)
		if v == 0 {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("waiting for it to leave the restorer's memory: %w", err)
		}
		ts := unix.NsecToTimespec(int64(50 * time.Millisecond))
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(v), uintptr(unsafe.Pointer(&ts)), 0, 0)
	}
}

// waitSignalled waits until a SIGSTOP took effect (state T) or a SIGKILL
// (or any death) made a zombie (state Z), read through the host procfs.
func (t *tx) waitSignalled(p int, sig unix.Signal) error {
	want := byte('T')
	if sig == unix.SIGKILL {
		want = 'Z'
	}
	path := fmt.Sprintf("/proc/%d/stat", t.hostPID(p))
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s after %v: %w", t.p.name(p), sig, err)
		}
		if st := procfs.StatState(b); st == want {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("%s: state %q after %v, want %q: %w", t.p.name(p), procfs.StatState(b), sig, want, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// joinInts formats pids as /proc's NS* columns do.
func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, " ")
}
