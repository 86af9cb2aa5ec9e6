package kernelfacts

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

func init() {
	// f21a: the init of A creates B's init with set_tid {200 in A, 1 in B}
	// (the host level left to the kernel) and reports its NSpid.
	roles["f21a"] = func(args []string) int {
		b, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, pids: []int{200, 1}, fds: []int{3, 4}, argv: []string{"pause"}})
		if err != nil {
			return fail("B init: %v", err)
		}
		say("f21a %s", join(fdinfoNSpid(b.pidfd)))
		waitEOF()
		return 0
	}
	// f23: a helper placed into a namespace with setns+clone3 is active
	// there, so it may create the init of a child namespace.
	roles["f23"] = func(args []string) int {
		c, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, argv: []string{"exit", "0"}})
		if err != nil {
			say("f23 %s", errName(err))
			return 0
		}
		ns := fdinfoNSpid(c.pidfd)
		reap(c)
		say("f23 ok %s", join(ns))
		return 0
	}
}

// TestF2_1SetTIDSetsEveryLevel (with F2.2, F2.3 and F9.1): one clone3 from
// the host, with pid_for_children two levels down, chooses the pid at all
// three levels; set_tid_size 1 chooses only the innermost, set_tid_size 2
// every level but the host's (which the kernel chooses); an init and
// its outer pids come from one CLONE_NEWPID clone whose set_tid[0] is 1;
// CLONE_NEWPID and unshare(CLONE_NEWPID) are EINVAL while pid_for_children
// is not the active namespace, and a helper placed there may use them; the
// pidfd's fdinfo shows every level, and -1 once reaped.
func TestF2_1SetTIDSetsEveryLevel(t *testing.T) {
	needRoot(t)
	var a *helper
	var hosts []int
	withHostPids(t, 4, func(p []int) (err error) {
		hosts = p
		a, err = start(t, spawnOpts{flags: unix.CLONE_NEWPID, pids: []int{p[0], 1}}, "f21a")
		return err
	})
	if a.proc.pid != hosts[0] || join(fdinfoNSpid(a.proc.pidfd)) != join([]int{hosts[0], 1}) {
		t.Errorf("A's init: pid %d NSpid %v, want [%d 1] (F2.2)", a.proc.pid, fdinfoNSpid(a.proc.pidfd), hosts[0])
	}
	bns := atois(a.want("f21a"))
	if len(bns) != 3 || bns[1] != 200 || bns[2] != 1 {
		t.Fatalf("B's init NSpid %v, want [host 200 1]", bns)
	}
	if _, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, pids: []int{hosts[1], 5}, argv: []string{"exit", "0"}}); err != unix.EINVAL {
		t.Errorf("CLONE_NEWPID with set_tid[0] = 5: %v, want EINVAL", err)
	}

	type result struct {
		newpid, unshare error
		full, inner     proc
		fullErr, inErr  error
		outer           proc // every level but L0's
		outerErr        error
		placed          *helper
		placedErr       error
	}
	done := make(chan result)
	go func() {
		var r result
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.newpid = err
			done <- r
			return // the thread was not changed: unlocking is safe
		}
		defer unix.Close(own)
		if err := setnsPid(fmt.Sprintf("/proc/%d/ns/pid", bns[0])); err != nil {
			r.newpid = err
			runtime.UnlockOSThread()
			done <- r
			return
		}
		_, r.newpid = spawn(spawnOpts{flags: unix.CLONE_NEWPID, pids: []int{hosts[2], 210, 1}, argv: []string{"exit", "0"}})
		r.unshare = unix.Unshare(unix.CLONE_NEWPID)
		r.full, r.fullErr = spawn(spawnOpts{pids: []int{hosts[3], 377, 77}, argv: []string{"exit", "0"}})
		r.inner, r.inErr = spawn(spawnOpts{pids: []int{79}, argv: []string{"exit", "0"}})
		r.outer, r.outerErr = spawn(spawnOpts{pids: []int{378, 78}, argv: []string{"exit", "0"}})
		r.placed, r.placedErr = start(t, spawnOpts{}, "f23")
		// Back to the active namespace before the thread returns to the
		// scheduler (docs/kernel.md F2.8's hazard); if that fails the
		// goroutine ends locked and the thread dies with it.
		if unix.Setns(own, unix.CLONE_NEWPID) == nil {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	if r.newpid != unix.EINVAL || r.unshare != unix.EINVAL {
		t.Errorf("after setns: CLONE_NEWPID %v, unshare(CLONE_NEWPID) %v, want EINVAL both (F2.3)", r.newpid, r.unshare)
	}
	if errors.Is(r.fullErr, unix.EEXIST) {
		t.Skipf("host pid %d was taken meanwhile by an unrelated process", hosts[3])
	}
	if r.fullErr != nil || r.inErr != nil || r.outerErr != nil || r.placedErr != nil {
		t.Fatalf("set_tid {%d 377 77}: %v; set_tid {79}: %v; set_tid {378 78}: %v; placed helper: %v", hosts[3], r.fullErr, r.inErr, r.outerErr, r.placedErr)
	}
	want := []int{hosts[3], 377, 77}
	if got := fdinfoNSpid(r.full.pidfd); join(got) != join(want) || r.full.pid != hosts[3] {
		t.Errorf("set_tid %v: clone3 returned %d, fdinfo NSpid %v", want, r.full.pid, got)
	}
	if got := atois(nsLine(r.full.pid, "NSpid")); join(got) != join(want) {
		t.Errorf("set_tid %v: /proc NSpid %v", want, got)
	}
	if got := fdinfoNSpid(r.inner.pidfd); len(got) != 3 || got[2] != 79 || got[1] == 377 {
		t.Errorf("set_tid {79} (innermost only): NSpid %v, want [any any 79]", got)
	}
	// Every level but L0's (restore --host-pids any): L1 and L2 exact, L0
	// the kernel's, which clone3 returns (the caller is active at L0).
	if got := fdinfoNSpid(r.outer.pidfd); len(got) != 3 || got[1] != 378 || got[2] != 78 || got[0] != r.outer.pid || got[0] <= 0 {
		t.Errorf("set_tid {378 78} (all but L0): NSpid %v, clone3 returned %d, want [%d 378 78]", got, r.outer.pid, r.outer.pid)
	}
	if p := r.placed.want("f23"); p[0] != "ok" || len(p) != 5 || p[4] != "1" {
		t.Errorf("CLONE_NEWPID by a helper placed into B: %v, want ok with NSpid [... 1]", p)
	}
	r.placed.stop()
	for _, p := range []proc{r.full, r.inner, r.outer} {
		fd, _ := unix.Dup(p.pidfd)
		if st, err := reap(p); err != nil || st.ExitStatus() != 0 {
			t.Errorf("reap %d: %v %v", p.pid, st, err)
		}
		if _, err := sys.FdinfoNSpid(fd); !errors.Is(err, sys.ErrReaped) {
			t.Errorf("fdinfo of a reaped child: %v, want Pid -1 (F9.1)", err)
		}
		unix.Close(fd)
	}
	a.stop()
}

func init() {
	// f27 HOSTPID: create, with CLONE_PARENT and exit_signal 0, a sibling
	// at HOSTPID, then exit; as a namespace init, only try.
	roles["f27"] = func(args []string) int {
		_, e1 := spawn(spawnOpts{flags: sys.CLONE_PARENT, argv: []string{"exit", "0"}})
		if os.Getpid() == 1 {
			_, e := spawn(spawnOpts{flags: sys.CLONE_PARENT, exitSignal: -1, argv: []string{"exit", "0"}})
			say("f27 %s %s", errName(e1), errName(e))
			return 0
		}
		p, _ := strconv.Atoi(args[0])
		c, e := spawn(spawnOpts{flags: sys.CLONE_PARENT, exitSignal: -1, pids: []int{p}, fds: []int{3, 4}, argv: []string{"pause"}})
		say("f27 %s %s %d", errName(e1), errName(e), c.pid)
		return 0
	}
}

// TestF2_7CloneParent: a short-lived helper creates, with CLONE_PARENT,
// set_tid and exit_signal 0, a child of its own parent, which reaps it;
// CLONE_PARENT with exit_signal SIGCHLD, or by a namespace init, is EINVAL.
func TestF2_7CloneParent(t *testing.T) {
	needRoot(t)
	var h *helper
	var r []string
	var want int
	withHostPids(t, 1, func(p []int) error {
		want = p[0]
		h = mustStart(t, spawnOpts{}, "f27", strconv.Itoa(p[0]))
		r = h.want("f27")
		if r[1] == "EEXIST" {
			h.stop()
			return unix.EEXIST
		}
		return nil
	})
	if r[0] != "EINVAL" {
		t.Errorf("CLONE_PARENT with exit_signal SIGCHLD: %s, want EINVAL", r[0])
	}
	if r[1] != "ok" || atoi(r[2]) != want {
		t.Fatalf("CLONE_PARENT set_tid {%d}: %s pid %s", want, r[1], r[2])
	}
	sib := h.want("ready") // the sibling runs; its creator may exit now
	if st := h.stop(); st.ExitStatus() != 0 {
		t.Errorf("helper exit %v", st)
	}
	if atoi(sib[0]) != want {
		t.Errorf("sibling reports pid %s, want %d", sib[0], want)
	}
	fd, err := unix.PidfdOpen(want, 0)
	if err != nil {
		t.Fatal(err)
	}
	if pp := strings.Join(nsLine(want, "PPid"), ""); pp != strconv.Itoa(os.Getpid()) {
		t.Errorf("sibling's parent %s, want the test process %d", pp, os.Getpid())
	}
	// The sibling exits at the control pipe's EOF (closed with h); the
	// test reaps it (exit_signal 0: __WALL).
	st, err := reap(proc{pid: want, pidfd: fd})
	if err != nil || st.ExitStatus() != 0 {
		t.Errorf("reaping the sibling: %v %v", st, err)
	}
	in := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f27", "0")
	if r := in.want("f27"); r[1] != "EINVAL" {
		t.Errorf("CLONE_PARENT by a namespace init: %s, want EINVAL", r[1])
	}
	in.stop()
}

// TestF2_8OsExecHasNoSetTID: syscall.SysProcAttr (os/exec) has no field
// for set_tid, so the restorer needs its own clone3.
func TestF2_8OsExecHasNoSetTID(t *testing.T) {
	ty := reflect.TypeOf(syscall.SysProcAttr{})
	for i := 0; i < ty.NumField(); i++ {
		if n := strings.ToLower(ty.Field(i).Name); strings.Contains(n, "tid") {
			t.Errorf("SysProcAttr.%s exists (%s): os/exec may pass set_tid now", ty.Field(i).Name, runtime.Version())
		}
	}
}
