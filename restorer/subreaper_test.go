package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// subreaperTree: the root has two children, S (a child subreaper in the
// image) and N (not), each with a child M whose own child O will be
// orphaned.
func subreaperTree() *pstree.Tree {
	b := newTB()
	b.tr.SubreapersRecorded = true
	b.task(1, []int{25000}, 0, []int{25000}, []int{25000})
	for _, base := range []int{25001, 25004} {
		s := b.task(1, []int{base}, 25000, []int{25000}, []int{25000})
		s.ChildSubreaper = base == 25001
		b.task(1, []int{base + 1}, base, []int{25000}, []int{25000})
		b.task(1, []int{base + 2}, base+1, []int{25000}, []int{25000})
	}
	return &b.tr
}

// TestRestoreSubreaper: the kernel shows the flag nowhere but in where
// orphans go, so the test makes orphans: after the restore it kills each M
// and, once M has died (its pidfd says so), reads O's parent through the
// host procfs: S's child's orphan goes to S, N's child's orphan past N (to
// the test process, the nearest subreaper above).
func TestRestoreSubreaper(t *testing.T) {
	scenarioCheck(t, subreaperTree, func(t *testing.T, tr *pstree.Tree, pay Payload) {
		for _, i := range []int{1, 4} {
			s, m, o := tr.Tasks[i], tr.Tasks[i+1], tr.Tasks[i+2]
			fd, err := unix.PidfdOpen(m.PID(), 0)
			if err != nil {
				t.Fatalf("pidfd of %d: %v", m.PID(), err)
			}
			if err := unix.Kill(m.PID(), unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1); err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", o.PID()))
			if err != nil {
				t.Fatal(err)
			}
			got := procfs.StatusField(b, "PPid")
			if want := strconv.Itoa(s.PID()); s.ChildSubreaper != (got == want) {
				t.Errorf("%s payload: orphan %d of %d went to %s; %d (subreaper %v) is its grandparent", []string{"exec", "stopped"}[pay], o.PID(), m.PID(), got, s.PID(), s.ChildSubreaper)
			}
		}
	})
}

// TestE2ESubreaper: a real child subreaper (this test binary's subreaper
// role, which sets the flag and execs a shell that becomes busybox sleep)
// with a child is dumped: the image records the flag (an eBPF task
// iterator reads it) on that task only; killed, restored in each payload
// (the exec payload runs busybox sleep, which sets nothing itself), `nsinit
// check` - which reads the live flags the same way - finds no difference.
func TestE2ESubreaper(t *testing.T) {
	needRoot(t)
	testutil.Require(t, testutil.BPF)
	testutil.Binary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, pay := range []string{"exec", "stopped"} {
		t.Run(pay, func(t *testing.T) {
			base := freeBase(t, 20000, 100)
			setHostCursor(t, base-1)
			cmd := exec.Command(self, "/bin/busybox", "sh", "-c", "/bin/busybox sleep 1000 & exec /bin/busybox sleep 999")
			cmd.Env = append(os.Environ(), realtreeRoleEnv+"=subreaper")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			root := cmd.Process.Pid
			t.Cleanup(func() { rtKill(t, root, nil) })
			if _, err := rtSettle(root, 2, 20*time.Second); err != nil {
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
			if !tr.SubreapersRecorded || len(tr.Tasks) != 2 || !tr.Tasks[0].ChildSubreaper || tr.Tasks[1].ChildSubreaper {
				t.Fatalf("image: subreapers recorded %v, tasks %d, flags %v", tr.SubreapersRecorded, len(tr.Tasks), subreaperFlags(tr))
			}
			rtKill(t, root, nil)
			cmd.Wait()
			if err := waitTreeGone(tr); err != nil {
				t.Fatal(err)
			}
			setHostCursor(t, base+99)
			if out, err := rtRun(t, nil, "restore", "-D", img, "-d", "--payload", pay); err != nil {
				if strings.Contains(out, "pid already taken") {
					t.Skipf("host busy: %s", strings.TrimSpace(out))
				}
				t.Fatalf("restore: %v\n%s", err, out)
			}
			t.Cleanup(func() { killTree(t, tr, &Restored{}) })
			if out, err := rtRun(t, nil, "check", "-t", strconv.Itoa(root), "-D", img); err != nil {
				if left := rtCheckFindings(out, pay == "stopped"); len(left) > 0 {
					t.Errorf("check: %v\n%s", err, strings.Join(left, "\n"))
				}
			}
		})
	}
}

func subreaperFlags(tr *pstree.Tree) []bool {
	var v []bool
	for _, tk := range tr.Tasks {
		v = append(v, tk.ChildSubreaper)
	}
	return v
}

// adoptedTree: an orphan adopted by a child subreaper that is no init. S
// (the subreaper) has a child R, whose child Q leads a session of its own;
// Q's child M made O in Q's session and died (a zombie Q never reaped), so
// O went past Q and R to S. O's parent S was never in O's session, and
// Q's parent is not S: only a proc that dies below S can leave O there.
func adoptedTree() *pstree.Tree {
	b := newTB()
	b.tr.SubreapersRecorded = true
	b.task(1, []int{25000}, 0, []int{25000}, []int{25000})
	s := b.task(1, []int{25001}, 25000, []int{25000}, []int{25000})
	s.ChildSubreaper = true
	b.task(1, []int{25002}, 25001, []int{25000}, []int{25000})
	b.task(1, []int{25003}, 25002, []int{25003}, []int{25003})
	m := b.task(1, []int{25004}, 25003, []int{25003}, []int{25003})
	m.State, m.ExitStatus = pstree.Zombie, 3<<8
	b.task(1, []int{25005}, 25001, []int{25003}, []int{25003})
	return &b.tr
}

// TestPlanAdoptedBySubreaper: the plan has a leaver helper below the
// subreaper set the flag before the leaver dies; replayed in the model
// (whose exit re-parents to the nearest live subreaper above, F5.2) it
// gives the image.
func TestPlanAdoptedBySubreaper(t *testing.T) {
	for _, pay := range []Payload{PayloadExec, PayloadStopped} {
		p, err := NewPlan(adoptedTree(), Options{Payload: pay})
		if err != nil {
			t.Fatal(err)
		}
		replay(t, p)
		set := false
		for i := range p.Steps {
			set = set || p.Steps[i].Op == OpSubreaper && p.Steps[i].Actor == 1
		}
		if !set {
			t.Errorf("no early PR_SET_CHILD_SUBREAPER by the subreaper in the plan")
		}
	}
}

// TestRestoreAdoptedBySubreaper restores adoptedTree on the real kernel and
// compares it through /proc (scenarioCheck): O's parent is S.
func TestRestoreAdoptedBySubreaper(t *testing.T) { scenarioCheck(t, adoptedTree, nil) }
