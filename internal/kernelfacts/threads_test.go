package kernelfacts

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The main goroutine stays on the main thread (the process's leader, on
// which the runtime runs package initialisation locked), so that no test
// goroutine runs there: onThread's threads are never the leader.
func init() { runtime.LockOSThread() }

// onThread runs f on a thread of its own (never the leader) and keeps that thread until the
// returned stop is called; the thread then ends (its goroutine exits
// locked), whatever f did to it.
func onThread(f func(tid int)) (stop func()) {
	ready, quit, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with us
		if unix.Gettid() == os.Getpid() {
			panic("onThread: on the leader thread")
		}
		f(unix.Gettid())
		close(ready)
		<-quit
	}()
	<-ready
	return func() { close(quit); <-done }
}

func statusOf(path, key string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

// TestF7_4CredentialsArePerThread: a raw setresuid/setresgid/setgroups
// changes only the calling thread; /proc/PID/task/TID/status shows each
// thread's own. And (F8.5) the change makes the memory every thread
// shares non-dumpable, for all of them.
func TestF7_4CredentialsArePerThread(t *testing.T) {
	needRoot(t)
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0) })
	var tid int
	var errs []error
	stop := onThread(func(id int) {
		tid = id
		groups := []uint32{7, 8}
		for _, c := range [][4]uintptr{
			{unix.SYS_SETGROUPS, 2, uintptr(unsafe.Pointer(&groups[0]))},
			{unix.SYS_SETRESGID, 2000, 2001, 2002},
			{unix.SYS_SETRESUID, 1000, 1001, 1002},
		} {
			if _, _, e := unix.RawSyscall(c[0], c[1], c[2], c[3]); e != 0 {
				errs = append(errs, e)
			}
		}
		runtime.KeepAlive(groups)
	})
	defer stop()
	if len(errs) > 0 {
		t.Fatalf("raw setgroups/setresgid/setresuid: %v", errs)
	}
	self := fmt.Sprintf("/proc/self/task/%d/status", os.Getpid())
	other := fmt.Sprintf("/proc/self/task/%d/status", tid)
	for _, c := range []struct{ path, key, want string }{
		{other, "Uid", "1000 1001 1002 1001"}, {other, "Gid", "2000 2001 2002 2001"}, {other, "Groups", "7 8"},
		{self, "Uid", "0 0 0 0"}, {self, "Gid", "0 0 0 0"},
	} {
		if got := statusOf(c.path, c.key); got != c.want {
			t.Errorf("%s %s: %q, want %q", c.path, c.key, got, c.want)
		}
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		t.Errorf("another thread's uid change: the leader reads PR_GET_DUMPABLE %d (%v), want 0", d, err)
	}
}

// TestF7_5ChildOfAThread: a child belongs to the thread that forked it: it
// is listed in that thread's /proc/PID/task/TID/children only (its PPid is
// the process's), and its parent-death signal fires when that thread
// exits, while the process lives on.
func TestF7_5ChildOfAThread(t *testing.T) {
	var tid int
	var h *helper
	var err error
	stop := onThread(func(id int) {
		tid = id
		// spawn sets PR_SET_PDEATHSIG = SIGKILL in the child, before
		// its exec.
		h, err = start(t, spawnOpts{}, "pause")
	})
	if err != nil {
		stop()
		t.Fatal(err)
	}
	// Ready: it has exec'd, so its parent-death signal is armed (a thread
	// that exits before the child's prctl sends nothing).
	h.want("ready")
	child := h.proc
	kids := func(tid int) []int {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/children", tid))
		var v []int
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			v = append(v, n)
		}
		return v
	}
	if !slices.Contains(kids(tid), child.pid) || slices.Contains(kids(os.Getpid()), child.pid) {
		t.Errorf("child %d: in the children of its thread %d: %v; of the leader: %v", child.pid, tid, kids(tid), kids(os.Getpid()))
	}
	if got := statusOf(fmt.Sprintf("/proc/%d/status", child.pid), "PPid"); got != strconv.Itoa(os.Getpid()) {
		t.Errorf("child's PPid %s, want the process %d", got, os.Getpid())
	}
	stop() // the thread exits; the process does not
	waitExited(t, child.pidfd)
	st, err := reap(child)
	h.done = true // reaped here, not by its cleanup
	h.ctl.Close()
	h.rep.Close()
	if err != nil || !st.Signaled() || st.Signal() != unix.SIGKILL {
		t.Errorf("child after its parent thread exited: %v %v, want killed by its PDEATHSIG (SIGKILL)", st, err)
	}
}
