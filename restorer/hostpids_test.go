package restorer

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/check"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// hostPIDsTree: f43 (plan_test.go) one level deeper, with sessions and
// groups at each of three pid levels. At level 0 S leads the session, G a
// group that I (level 1's init) is moved into by its outer parent and that
// the level-0 zombie Z0 joined; at level 1 I leads a session with D's group
// in it and members D, E in S's session (led from above) and F in G's
// group; at level 2 J (an init, child of K) leads a session with M's
// group, in which the zombie Z2 died. X, at level 0, is in a session whose
// leader is dead (a helper plays it).
func hostPIDsTree() *pstree.Tree {
	b := (&tb{tr: *f43()}).ns(3, 2, 2)
	z := b.task(1, []int{31507}, 31500, []int{31500}, []int{31501}) // Z0
	z.State, z.ExitStatus = pstree.Zombie, 7<<8
	b.task(3, []int{31508, 6, 1}, 31506, []int{31508, 6, 1}, []int{31508, 6, 1})     // J
	b.task(3, []int{31509, 7, 2}, 31508, []int{31508, 6, 1}, []int{31509, 7, 2})     // M
	z = b.task(3, []int{31510, 8, 3}, 31508, []int{31508, 6, 1}, []int{31509, 7, 2}) // Z2
	z.State, z.ExitStatus = pstree.Zombie, 15
	b.task(1, []int{31511}, 31500, []int{31512}, []int{31512}) // X, whose session leader 31512 is dead
	return &b.tr
}

// TestPlanHostPIDsAny: with kernel-chosen host pids no step writes or
// parks the host cursor and no clone sets a level-0 pid, while every
// deeper level is still set; the plan replays in the model. An image with
// a user namespace the restore would create is refused (its maps are
// written through a level-0 pid).
func TestPlanHostPIDsAny(t *testing.T) {
	opt := Options{HostPIDsAny: true, Features: Features{MultiLevelSetTID: true}}
	p := mustPlan(t, hostPIDsTree(), opt)
	for i, s := range p.Steps {
		if s.Op == OpLastPID && s.Actor == p.HostWriter {
			t.Errorf("step %d writes the host cursor: %s", i, p.describe(&s))
		}
		if s.Op != OpClone || s.Actor == Restorer {
			continue
		}
		n := len(p.Procs[s.Target].PIDs)
		if s.SetTID && s.SetFrom == 0 {
			t.Errorf("step %d sets a level-0 pid: %s", i, p.describe(&s))
		}
		if n > 1 && (!s.SetTID || s.SetFrom != 1) {
			t.Errorf("step %d does not set levels 1..%d: %s (set_tid %v from %d)", i, n-1, p.describe(&s), s.SetTID, s.SetFrom)
		}
	}
	if !strings.Contains(p.String(), "setpgid(31502, 31501)") {
		t.Errorf("no outer setpgid of I into G by level-0 numbers:\n%s", p)
	}
	tr := userTree()
	if _, err := NewPlan(tr, opt); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "--host-pids any") {
		t.Errorf("a user namespace with --host-pids any: %v, want ErrUnsupported naming it", err)
	}
}

// TestE2EHostPIDsAny (issue #18): hostPIDsTree, placed and dumped without
// --kill, so that every level-0 pid of the image stays taken by the
// original, is restored with `--host-pids any --pid-map F` twice side by
// side, once in each placement (set_tid; ns_last_pid for inner levels).
// Through the host's /proc, for every task of the image: the pid the map
// gives is another than the original's, its NSpid, NSsid and NSpgid below
// level 0 are the image's, at level 0 they are the map's image of the
// image's (sessions and groups follow their leaders' new pids), its
// parent is the map's image of its parent, zombies are zombies; the dead
// session leader's number is in the map. `nsinit check --pid-map F` finds
// no difference, `check` without it does; combinations that make no sense
// are usage errors (200).
func TestE2EHostPIDsAny(t *testing.T) {
	needRoot(t)
	img, dumped := dumpOfRunning(t, hostPIDsTree()) // newpidns_test.go
	for _, bad := range [][]string{
		{"--host-pids", "any", "--into-new-pidns"},
		{"--host-pids", "some"},
		{"--pid-map", filepath.Join(t.TempDir(), "m")},
	} {
		out, err := nsinit(t, append([]string{"restore", "-D", img, "-d"}, bad...)...)
		if exitCode(err) != 200 {
			t.Errorf("restore %v: %v, want usage error 200:\n%s", bad, err, out)
		}
	}
	// Two copies side by side, one a placement, beside the original; all
	// killed at once at the end (killTree waits until the test has no
	// child left).
	all := &pstree.Tree{Tasks: slices.Clone(dumped.Tasks)}
	t.Cleanup(func() { killTree(t, all, &Restored{}) })
	for _, placement := range []string{"set_tid", "ns_last_pid"} {
		mapFile := filepath.Join(t.TempDir(), "pidmap")
		out, err := nsinit(t, "restore", "-D", img, "-d", "--host-pids", "any", "--pid-map", mapFile, "--placement", placement)
		if err != nil {
			t.Fatalf("restore --host-pids any --placement %s while the original runs: %v\n%s", placement, err, out)
		}
		b, err := os.ReadFile(mapFile)
		if err != nil {
			t.Fatal(err)
		}
		m, err := check.ParsePIDMap(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range dumped.Tasks {
			cp := tk
			cp.PIDs = []int{m[tk.PID()]}
			all.Tasks = append(all.Tasks, cp)
		}
		t.Run(placement, func(t *testing.T) {
			t.Logf("pid map (image -> restored):\n%s", b)
			checkHostPIDsCopy(t, dumped, m, restoredRoot(t, out), true)
			root := strconv.Itoa(restoredRoot(t, out))
			if out, err := nsinit(t, "check", "-t", root, "-D", img, "--pid-map", mapFile); err != nil {
				t.Errorf("check --pid-map: %v\n%s", err, out)
			}
			if out, err := nsinit(t, "check", "-t", root, "-D", img); exitCode(err) != 1 {
				t.Errorf("check without the pid map: %v, want differences (exit 1)\n%s", err, out)
			}
		})
	}
}

// checkHostPIDsCopy checks through /proc a copy of img restored with
// kernel-chosen host pids, whose pid map is m and root root; taken: the
// image's level-0 pids are held by the original.
func checkHostPIDsCopy(t *testing.T, img *pstree.Tree, m map[int]int, root int, taken bool) {
	t.Helper()
	if root != m[img.Tasks[0].PID()] {
		t.Errorf("printed root %d, the map says %d", root, m[img.Tasks[0].PID()])
	}
	named := map[int]bool{} // every level-0 number a proc plays
	for _, tk := range img.Tasks {
		named[tk.PID()], named[tk.SIDs[0]], named[tk.PGIDs[0]] = true, true, true
	}
	if len(m) != len(named) {
		t.Errorf("pid map of %d numbers, the image names %d (tasks and a dead leader)", len(m), len(named))
	}
	name := func(n int) int {
		if v, ok := m[n]; ok {
			return v
		}
		return n
	}
	rd := procfs.New("/proc")
	for _, tk := range img.Tasks {
		live, ok := m[tk.PID()]
		if !ok {
			t.Errorf("task %v: not in the pid map", tk.PIDs)
			continue
		}
		if taken && live == tk.PID() {
			t.Errorf("task %v: got its original's level-0 pid %d, which the original holds", tk.PIDs, live)
		}
		st, err := rd.Status(live)
		if err != nil {
			t.Errorf("task %v at %d: %v", tk.PIDs, live, err)
			continue
		}
		check := func(what string, got, img []int) {
			want := append([]int{name(img[0])}, img[1:]...)
			if !slices.Equal(got, want) {
				t.Errorf("task %v (now %d): %s %v, want %v (image %v)", tk.PIDs, live, what, got, want, img)
			}
		}
		check("NSpid", st.NSpid, tk.PIDs)
		check("NSsid", st.NSsid, tk.SIDs)
		check("NSpgid", st.NSpgid, tk.PGIDs)
		if tk.PPID != 0 && st.PPid != name(tk.PPID) {
			t.Errorf("task %v (now %d): parent %d, want %d (image %d)", tk.PIDs, live, st.PPid, name(tk.PPID), tk.PPID)
		}
		if (tk.State == pstree.Zombie) != (st.State == 'Z') {
			t.Errorf("task %v (now %d): state %c, image %v", tk.PIDs, live, st.State, tk.State)
		}
	}
}

// TestRestoreHostPIDsAnyBesideForkLoop: with kernel-chosen host pids a
// busy host does not matter - nothing is placed at level 0 - so five
// restores of hostPIDsTree (its image's level-0 pids whatever they are on
// this machine) beside a host-level fork loop all succeed, each checked
// through /proc with the pid map Execute returns. The copies are killed
// once the loop is gone: killTree's reaping stops waiting when only the
// loop's children are left, before killed tasks have finished dying.
func TestRestoreHostPIDsAnyBesideForkLoop(t *testing.T) {
	needRoot(t)
	// Killed through pidfds of their own, each waited for until it has
	// exited, then the roots (the test's children) reaped: numbers of
	// tasks already gone may be anyone's on a shared host.
	var pids []int
	var results []*Restored
	t.Cleanup(func() {
		for _, pid := range slices.Backward(pids) {
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue
			}
			_ = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10000)
			unix.Close(fd)
		}
		for _, res := range results {
			_, _, _ = sys.WaitPidfd(res.RootPidfd(), 0)
			res.Close()
		}
	})
	t.Run("busy", func(t *testing.T) {
		forkLoop(t, 10*time.Minute)
		for i := 0; i < 5; i++ {
			tr := sleepers(hostPIDsTree())
			p, err := NewPlan(tr, Options{HostPIDsAny: true, Features: features})
			if err != nil {
				t.Fatalf("plan: %v", err)
			}
			res, err := Execute(p, ExecOptions{})
			if err != nil {
				t.Fatalf("restore %d beside the fork loop: %v", i, err)
			}
			results = append(results, res)
			for _, tk := range tr.Tasks {
				if tk.State != pstree.Zombie {
					pids = append(pids, res.HostPIDs[tk.PID()])
				}
			}
			checkHostPIDsCopy(t, tr, res.HostPIDs, res.Root, false)
		}
	})
}
