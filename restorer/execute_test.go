package restorer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv(attackerRole) != "" {
		os.Exit(attackWindow())
	}
	// Orphans of restored trees come back to the test process, which reaps
	// them in cleanup: nothing is left to the host's init.
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	code := m.Run()
	if n := sys.OpenFDs(); n != 0 && code == 0 {
		fmt.Fprintf(os.Stderr, "%d internal/sys fds leaked\n", n)
		code = 1
	}
	os.Exit(code)
}

// freeBase finds n consecutive free host pids at or above from (tests use
// 20000-32000, F: host pid_max is 32768). It starts at a random place:
// the kernel may hold a pid that /proc does not show (seen on the shared
// host for minutes at a time), and a fixed start would fail every run on it.
func freeBase(t testing.TB, from, n int) int {
	t.Helper()
	if span := 32000 - n - from; span > 0 {
		if b := freeBaseFrom(from+rand.IntN(span), n); b > 0 {
			return b
		}
	}
	if b := freeBaseFrom(from, n); b > 0 {
		return b
	}
	t.Skip("no free host pid window")
	return 0
}

func freeBaseFrom(from, n int) int {
	// Not right above the host's cursor: the processes the test starts
	// next (the nsinit binary, its runtime threads) take those pids.
	cursor := -1
	if v, err := os.ReadFile("/proc/sys/kernel/ns_last_pid"); err == nil {
		cursor, _ = strconv.Atoi(strings.TrimSpace(string(v)))
	}
	for b := from; b+n < 32000; {
		if cursor >= 0 && b <= cursor+2000 && b+n > cursor {
			b = cursor + 2001
			continue
		}
		taken := -1
		for p := b + n - 1; p >= b; p-- {
			if _, err := os.Stat("/proc/" + strconv.Itoa(p)); err == nil {
				taken = p
				break
			}
		}
		if taken < 0 {
			return b
		}
		b = taken + 1 // the next window starts after the highest taken pid
	}
	return 0
}

// shift moves a tree's level-0 pids (and the level-0 ids of sessions and
// groups, and PPIDs) by d, so each test can use a free window.
func shift(tr *pstree.Tree, d int) *pstree.Tree {
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		t.PIDs[0] += d
		t.SIDs[0] += d
		t.PGIDs[0] += d
		if t.PPID != 0 {
			t.PPID += d
		}
		if t.ParentTID != 0 {
			t.ParentTID += d
		}
		for j := range t.Threads {
			t.Threads[j].TIDs[0] += d
		}
	}
	return tr
}

// restore plans and executes tr, registering a cleanup that kills and
// reaps the whole tree.
func restore(t *testing.T, tr *pstree.Tree, pay Payload) (*Plan, *Restored, error) {
	t.Helper()
	p, err := NewPlan(tr, Options{Payload: pay})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	res, err := Execute(p, ExecOptions{Timeout: 20 * time.Second})
	if err == nil {
		t.Cleanup(func() { killTree(t, tr, res) })
	}
	return p, res, err
}

// killTree kills every task of tr and reaps everything the test process
// inherited.
func killTree(t testing.TB, tr *pstree.Tree, res *Restored) {
	// By pid number, but only what is still ours: a pid freed by a dead
	// task may already belong to someone else's process on a shared host.
	for i := len(tr.Tasks) - 1; i >= 0; i-- {
		if leftOver(tr.Tasks[i]) {
			_ = unix.Kill(tr.Tasks[i].PID(), unix.SIGKILL)
		}
	}
	if res.RootFD != nil {
		_, _, _ = sys.WaitPidfd(res.RootFD.Int(), 0)
		res.RootFD.Close()
	}
	reapChildren(10 * time.Second)
	for _, tk := range tr.Tasks {
		if leftOver(tk) {
			t.Errorf("task %d left behind", tk.PID())
		}
	}
}

// checkTree compares the live tree with the image through the host procfs:
// NSpid, PPid, NSpgid, NSsid at every level, state, zombie exit status
// (stat field 52) and threads (stopped payload).
func checkTree(t *testing.T, tr *pstree.Tree, pay Payload) {
	t.Helper()
	for _, tk := range tr.Tasks {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tk.PID()))
		if err != nil {
			t.Errorf("task %v: %v", tk.PIDs, err)
			continue
		}
		s := string(st)
		ints := func(v []int) string { return joinInts(v) }
		if got := procfs.StatusField([]byte(s), "NSpid"); got != ints(tk.PIDs) {
			t.Errorf("task %v: NSpid %s", tk.PIDs, got)
		}
		if got := procfs.StatusField([]byte(s), "PPid"); got != strconv.Itoa(tk.PPID) && tk.PPID != 0 {
			t.Errorf("task %v: PPid %s, want %d", tk.PIDs, got, tk.PPID)
		}
		if tk.SIDs[0] != tr.Tasks[0].SIDs[0] || tr.Tasks[0].SIDs[0] == tr.Tasks[0].PID() {
			if got := procfs.StatusField([]byte(s), "NSsid"); got != ints(tk.SIDs) {
				t.Errorf("task %v: NSsid %s, want %v", tk.PIDs, got, tk.SIDs)
			}
			if got := procfs.StatusField([]byte(s), "NSpgid"); got != ints(tk.PGIDs) {
				t.Errorf("task %v: NSpgid %s, want %v", tk.PIDs, got, tk.PGIDs)
			}
		}
		state := procfs.StatusField([]byte(s), "State")
		switch {
		case tk.State == pstree.Zombie:
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", tk.PID()))
			f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
			if !strings.HasPrefix(state, "Z") || len(f) < 50 || f[49] != strconv.Itoa(tk.ExitStatus) {
				t.Errorf("task %v: state %s exit %v, want zombie %d", tk.PIDs, state, f[len(f)-1], tk.ExitStatus)
			}
		case tk.State == pstree.Stopped || pay == PayloadStopped:
			if !strings.HasPrefix(state, "T") {
				t.Errorf("task %v: state %s, want stopped", tk.PIDs, state)
			}
		default:
			if strings.HasPrefix(state, "Z") || strings.HasPrefix(state, "T") {
				t.Errorf("task %v: state %s, want running", tk.PIDs, state)
			}
		}
		if tk.State != pstree.Zombie {
			checkPFC(t, tr, tk)
		}
		if pay == PayloadStopped && tk.State != pstree.Zombie {
			for _, th := range tk.Threads {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", tk.PID(), th.TIDs[0]))
				if err != nil || procfs.StatusField(b, "NSpid") != ints(th.TIDs) {
					t.Errorf("thread %v of %v: %v %q", th.TIDs, tk.PIDs, err, procfs.StatusField(b, "NSpid"))
				}
			}
		}
	}
	checkNSMembership(t, tr)
	checkOwnersAndMaps(t, tr, pay)
}

// checkPFC checks a live task's pid_for_children through the host procfs:
// the pid namespace of the tasks the image puts in it and of no other. A
// namespace nobody is in yet (`unshare -p` before the first fork) has no
// init, and the kernel shows no pid_for_children link for it at all
// (ENOENT), where a task that did not unshare shows its own namespace.
func checkPFC(t *testing.T, tr *pstree.Tree, tk pstree.Task) {
	t.Helper()
	want := tk.NS[pstree.PidForChildrenNS]
	if want == 0 {
		return
	}
	ino := func(pid int, ns string) (uint64, error) {
		var st unix.Stat_t
		err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), &st)
		return st.Ino, err
	}
	got, err := ino(tk.PID(), "pid_for_children")
	empty := true
	for _, o := range tr.Tasks {
		if o.State == pstree.Zombie {
			continue
		}
		in, oerr := ino(o.PID(), "pid")
		if oerr != nil {
			t.Errorf("task %v: %v", o.PIDs, oerr)
			continue
		}
		if o.NS[pstree.PidNS] == want {
			empty = false
			if err != nil || got != in {
				t.Errorf("task %v: pid_for_children (%d, %v) is not the pid ns of %v", tk.PIDs, got, err, o.PIDs)
			}
		} else if err == nil && got == in {
			t.Errorf("task %v: pid_for_children is the pid ns of %v, want ns %d", tk.PIDs, o.PIDs, want)
		}
	}
	if empty && !errors.Is(err, unix.ENOENT) {
		t.Errorf("task %v: pid_for_children of a namespace without init: %v, want ENOENT", tk.PIDs, err)
	}
}

func needRoot(t testing.TB) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox")
	}
}

// sleepers gives every task busybox sleep as its payload.
func sleepers(tr *pstree.Tree) *pstree.Tree {
	for i := range tr.Tasks {
		tr.Tasks[i].Exe, tr.Tasks[i].Argv, tr.Tasks[i].Cwd = "/bin/busybox", []string{"sleep", "1000"}, "/"
	}
	return tr
}

// simpleTree: a session leader at level 0 with a group, a member, and an
// inner task in another group.
func simpleTree(base int) *pstree.Tree {
	b := newTB()
	b.task(1, []int{base}, 0, []int{base}, []int{base})
	b.task(1, []int{base + 1}, base, []int{base}, []int{base + 1})
	b.task(1, []int{base + 2}, base+1, []int{base}, []int{base + 1})
	b.task(1, []int{base + 3}, base, []int{base}, []int{base})
	b.task(1, []int{base + 4}, base+3, []int{base + 4}, []int{base + 4})
	return sleepers(&b.tr)
}

func TestRestoreSingleNamespace(t *testing.T) {
	needRoot(t)
	for _, pay := range []Payload{PayloadExec, PayloadStopped} {
		t.Run(fmt.Sprint(pay), func(t *testing.T) {
			base := freeBase(t, 24000, 8)
			tr := simpleTree(base)
			_, _, err := restore(t, tr, pay)
			if err != nil {
				t.Fatal(err)
			}
			checkTree(t, tr, pay)
		})
	}
}

var _ = exec.Command
var _ = errors.Is

// reapChildren reaps whatever the test process inherited until it has no
// child left, for at most d; it says whether none is left.
func reapChildren(d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		pid, err := unix.Wait4(-1, nil, unix.WNOHANG|unix.WALL, nil)
		if err == unix.ECHILD {
			return true
		}
		if pid == 0 {
			if onlyLoopChildren() {
				return true
			}
			time.Sleep(time.Millisecond)
		}
	}
	return false
}

// startScriptTree starts cmd (a tree-building script), in a session of its
// own; the cleanup kills what is left of the tree and reaps the root.
func startScriptTree(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	t.Cleanup(func() {
		if cmd.ProcessState != nil {
			return // reaped by the test: root may name another process now
		}
		if live, err := dump.ReadLive(root, ""); err == nil {
			for i := len(live.Tasks) - 1; i >= 0; i-- {
				unix.Kill(live.Tasks[i].PID(), unix.SIGKILL)
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
}
