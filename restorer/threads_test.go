package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// threadParentTree: a root with two threads whose children were forked by
// different threads: the leader's child, a child of each thread, a child
// of the second thread that is PID 1 of a new pid namespace (CLONE_NEWPID
// from a thread), a zombie child of the first thread, and, inside the new
// namespace, a child of its init's own thread and a child of the root's
// first thread born there through setns(CLONE_NEWPID) (by that thread:
// pid_for_children is per thread).
func threadParentTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	root := b.task(1, []int{24000}, 0, []int{24000}, []int{24000})
	root.Threads = []pstree.Thread{{TIDs: []int{24001}}, {TIDs: []int{24002}}}
	kid := func(ns pstree.NSID, pids []int, ppid, ptid int) *pstree.Task {
		sids, pgids := make([]int, len(pids)), make([]int, len(pids))
		sids[0], pgids[0] = 24000, 24000
		t := b.task(ns, pids, ppid, sids, pgids)
		t.ParentTID = ptid
		return t
	}
	kid(1, []int{24003}, 24000, 24000)
	kid(1, []int{24004}, 24000, 24001)
	kid(1, []int{24005}, 24000, 24002)
	in := kid(2, []int{24006, 1}, 24000, 24002)
	in.Threads = []pstree.Thread{{TIDs: []int{24007, 2}}}
	z := kid(1, []int{24008}, 24000, 24001)
	z.State, z.ExitStatus = pstree.Zombie, 5<<8
	kid(2, []int{24009, 3}, 24006, 24007)
	kid(2, []int{24010, 4}, 24000, 24001) // born via setns, by a thread
	return &b.tr
}

// TestPlanParentThreads: with the stopped payload every child of a thread
// is cloned by that thread; with the exec payload (no threads) by the
// leader, and the plan is still accepted (recorded, not honoured).
func TestPlanParentThreads(t *testing.T) {
	p := mustPlan(t, threadParentTree(), Options{Payload: PayloadStopped})
	var got []string
	for _, s := range p.Steps {
		if s.Op == OpClone && s.Thread != 0 {
			got = append(got, fmt.Sprintf("%s by %d", p.name(s.Target), s.Thread))
		}
	}
	want := []string{"task 24004 by 24001", "task 24005 by 24002", "task 24006/1 by 24002", "task 24008 by 24001", "task 24009/3 by 24007", "task 24010/4 by 24001"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("clones by threads:\n%s\nwant\n%s\nplan:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), p)
	}
	p = mustPlan(t, threadParentTree(), Options{Payload: PayloadExec})
	for _, s := range p.Steps {
		if s.Thread != 0 {
			t.Errorf("exec payload: %s", p.describe(&s))
		}
	}
}

// TestRestoreParentThreads restores threadParentTree and reads
// /proc/PID/task/TID/children of every thread (checkParentThreads).
func TestRestoreParentThreads(t *testing.T) {
	scenarioCheck(t, threadParentTree, checkParentThreads)
}

// checkParentThreads: with the stopped payload, each task is listed in
// the children file of the thread the image names (the leader's for
// ParentTID == PPID), and in no other; with the exec payload the leader's
// lists every child.
func checkParentThreads(t *testing.T, tr *pstree.Tree, pay Payload) {
	t.Helper()
	listed := map[int]int{} // child -> tid whose children file lists it
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			continue
		}
		tids := []int{tk.PID()}
		if pay == PayloadStopped {
			for _, th := range tk.Threads {
				tids = append(tids, th.TIDs[0])
			}
		}
		for _, tid := range tids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", tk.PID(), tid))
			if err != nil {
				t.Errorf("task %v thread %d: %v", tk.PIDs, tid, err)
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				c, _ := strconv.Atoi(f)
				if prev, dup := listed[c]; dup {
					t.Errorf("child %d listed by threads %d and %d", c, prev, tid)
				}
				listed[c] = tid
			}
		}
	}
	for i, tk := range tr.Tasks {
		if i == 0 || tk.ParentTID == 0 {
			continue
		}
		want := tk.ParentTID
		if pay == PayloadExec {
			want = tk.PPID
		}
		if got := listed[tk.PID()]; got != want {
			t.Errorf("task %v: in the children of thread %d, want %d", tk.PIDs, got, want)
		}
	}
}

// TestE2EParentThreads: a real process (this test binary's threadfork
// role) whose leader forked one child and another thread the other is
// dumped: the image and `nsinit show` name the thread; killed, restored
// with the stopped payload, `nsinit check` finds no difference but the
// parked states, and /proc/PID/task/TID/children lists each child under
// its thread again.
func TestE2EParentThreads(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base := freeBase(t, 20000, 100)
	setHostCursor(t, base-1)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), realtreeRoleEnv+"=threadfork")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	t.Cleanup(func() { rtKill(t, root, nil) })
	if _, err := rtSettle(root, 3, 20*time.Second); err != nil {
		t.Fatalf("the tree did not form: %v", err)
	}
	img := filepath.Join(t.TempDir(), "img")
	if out, err := rtRun(t, nil, "dump", "-t", strconv.Itoa(root), "-D", img); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	tr, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	byThread := 0
	for _, tk := range tr.Tasks[1:] {
		if tk.ParentTID == 0 {
			t.Errorf("task %v: no parent thread recorded", tk.PIDs)
		} else if tk.ParentTID != tk.PPID {
			byThread++
			if !slices.ContainsFunc(tr.Tasks[0].Threads, func(th pstree.Thread) bool { return th.TIDs[0] == tk.ParentTID }) {
				t.Errorf("task %v: parent thread %d is not a thread of %d", tk.PIDs, tk.ParentTID, tk.PPID)
			}
		}
	}
	if byThread != 1 {
		t.Fatalf("%d children of a non-leader thread in the image, want 1", byThread)
	}
	if out, err := rtRun(t, nil, "show", img); err != nil || !strings.Contains(out, `"parent_tid"`) {
		t.Errorf("show: %v, no parent_tid in\n%s", err, out)
	}
	rtKill(t, root, nil)
	cmd.Wait()
	if err := waitTreeGone(tr); err != nil {
		t.Fatal(err)
	}
	setHostCursor(t, base+99)
	if out, err := rtRun(t, nil, "restore", "-D", img, "-d", "--payload", "stopped"); err != nil {
		if strings.Contains(out, "pid already taken") {
			t.Skipf("host busy: %s", strings.TrimSpace(out))
		}
		t.Fatalf("restore: %v\n%s", err, out)
	}
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	if out, err := rtRun(t, nil, "check", "-t", strconv.Itoa(root), "-D", img); err != nil {
		if left := rtCheckFindings(out, true); len(left) > 0 {
			t.Errorf("check: %v\n%s", err, strings.Join(left, "\n"))
		}
	}
	checkParentThreads(t, tr, PayloadStopped)
}

// waitTreeGone waits until no task of tr is left (killed and reaped).
func waitTreeGone(tr *pstree.Tree) error {
	for i := 0; i < 2000; i++ {
		left := 0
		for _, tk := range tr.Tasks {
			if leftOver(tk) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		reapChildren(10 * time.Millisecond)
	}
	return fmt.Errorf("the dumped tree is still there after its kill")
}

// threadUserTree: a root whose second thread cloned I with
// CLONE_NEWUSER|CLONE_NEWPID (histories seed 3): I is PID 1 of pid ns 2,
// owned by user ns 61, which the root's thread made from the host's.
func threadUserTree() *pstree.Tree {
	b := userNS61()
	b.tr.Namespace(1).Owner, b.tr.Namespace(2).Owner = 60, 61
	root := b.task(1, []int{24100}, 0, []int{24100}, []int{24100})
	root.NS[pstree.UserNS] = 60
	root.Threads = []pstree.Thread{{TIDs: []int{24101}}, {TIDs: []int{24102}}}
	in := b.task(2, []int{24103, 1}, 24100, []int{24100, 0}, []int{24100, 0})
	in.NS[pstree.UserNS], in.ParentTID = 61, 24102
	in.Creds = pstree.Creds{UID: 100000, EUID: 100000, SUID: 100000, FSUID: 100000, GID: 100000, EGID: 100000, SGID: 100000, FSGID: 100000}
	return &b.tr
}

// TestPlanParentThreadNewUser: with the stopped payload the thread clones
// I with CLONE_NEWUSER, and the user namespace's maps follow.
func TestPlanParentThreadNewUser(t *testing.T) {
	for _, opt := range allOptions() {
		opt.Payload = PayloadStopped
		p := mustPlan(t, threadUserTree(), opt)
		i := slices.IndexFunc(p.Steps, func(s Step) bool { return s.Op == OpClone && s.Target == 1 })
		if i < 0 || p.Steps[i].Thread != 24102 || p.Steps[i].NS[pstree.UserNS] != 61 {
			t.Errorf("%+v: I is not cloned by thread 24102 with CLONE_NEWUSER:\n%s", opt, p)
		}
	}
}

func TestRestoreParentThreadNewUser(t *testing.T) {
	scenarioCheck(t, threadUserTree, checkParentThreads)
}

// threadStandInTree is userStandInTree(false) with the root's thread as the
// parent thread of both its children (histories seed 76): the user
// stand-in that clones I with CLONE_PARENT must be that thread's child, as
// A was, for I to be.
func threadStandInTree() *pstree.Tree {
	tr := userStandInTree(false)
	tr.Tasks[0].Threads = []pstree.Thread{{TIDs: []int{22410}}}
	tr.Tasks[1].ParentTID, tr.Tasks[2].ParentTID = 22410, 22410
	return tr
}

// TestPlanParentThreadStandIn: with the stopped payload the root's thread
// clones the stand-in, whose CLONE_PARENT child is then that thread's.
func TestPlanParentThreadStandIn(t *testing.T) {
	p := mustPlan(t, threadStandInTree(), Options{Payload: PayloadStopped})
	h := slices.IndexFunc(p.Procs, func(pr Proc) bool { return pr.Why == whyStandIn })
	i := slices.IndexFunc(p.Steps, func(s Step) bool { return s.Op == OpClone && s.Target == h })
	if h < 0 || i < 0 || p.Steps[i].Thread != 22410 {
		t.Errorf("the stand-in is not cloned by thread 22410:\n%s", p)
	}
}

func TestRestoreParentThreadStandIn(t *testing.T) {
	scenarioCheck(t, threadStandInTree, checkParentThreads)
}
