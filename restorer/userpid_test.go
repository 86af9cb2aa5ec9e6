package restorer

import (
	"errors"
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

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// clonensBin builds testdata/clonens.c (clone(CLONE_NEWUSER|CLONE_NEWPID)
// in one call, maps written by the parent, which stays outside) into a
// directory every uid can read: the trees run it as uid 100000 too.
func clonensBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NSINIT_TEST_CLONENS"); p != "" {
		return p // built on the host (a test VM has no compiler)
	}
	dir := testutil.SharedTempDir(t, "nsinit-clonens-", 0o755)
	bin := filepath.Join(dir, "clonens")
	if out, err := exec.Command("cc", "-O2", "-static", "-Wall", "-o", bin, "testdata/clonens.c").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/clonens.c (needs cc and a static libc): %v\n%s", err, out)
	}
	return bin
}

// userPidShapes are real trees with a pid namespace created together with
// its owning user namespace, nested twice. The outer command's first child
// B is PID 1 of the first pid namespace; B leads its own session and
// starts the second nesting (C, whose child D is PID 1 of the second).
// %[1]s is busybox, %[2]s clonens.
var userPidShapes = []struct {
	name, script string
	n            int // tasks under the outer command
}{
	// unshare(CLONE_NEWUSER|CLONE_NEWPID) in one call, maps written by
	// the unshare process itself, then fork: rootless podman's shape.
	{"together", `unshare -U --map-root-user -p -f %[1]s setsid %[1]s sh -c 'unshare -U --map-root-user -p -f %[1]s sleep 1000 & exec %[1]s sleep 999'`, 4},
	// unshare(CLONE_NEWUSER), maps, then unshare(CLONE_NEWPID) and fork
	// in a later exec (two unshare commands).
	{"apart", `unshare -U --map-root-user unshare -p -f %[1]s setsid %[1]s sh -c 'unshare -U --map-root-user unshare -p -f %[1]s sleep 1000 & exec %[1]s sleep 999'`, 4},
	// clone(CLONE_NEWUSER|CLONE_NEWPID) by a parent that stays in its
	// user namespace and writes the maps from there: bubblewrap, runc,
	// Chromium's sandbox.
	{"clone", `%[2]s %[1]s setsid %[1]s sh -c '%[2]s %[1]s sleep 1000 & exec %[1]s sleep 999'`, 4},
	// the same with subordinate-id style maps: root of the first level is
	// host uid 100000, the second maps 1000 of the first's ids, setgroups
	// denied.
	{"clone-100000", `%[2]s -m 0:100000:65536 %[1]s setsid %[1]s sh -c '%[2]s -m 0:1000:1000 -d %[1]s sleep 1000 & exec %[1]s sleep 999'`, 4},
}

// TestE2EUserPidNamespaces builds each shape for real, dumps it (from the
// outer command, and from B, the first pid namespace's init, whose creator
// is then outside the image), kills it, restores it in both placements and
// both payloads, and compares /proc before and after: NSpid, PPid, NSpgid,
// NSsid, state, and which task's user namespace owns each task's pid
// namespace (NS_GET_USERNS); then `nsinit check`.
func TestE2EUserPidNamespaces(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not found")
	}
	cl := clonensBin(t)
	for _, sh := range userPidShapes {
		for _, from := range []string{"outer", "init"} {
			for _, pl := range []string{"set_tid", "ns_last_pid"} {
				for _, pay := range []string{"exec", "stopped"} {
					t.Run(strings.Join([]string{sh.name, from, pl, pay}, "/"), func(t *testing.T) {
						userPidTree(t, fmt.Sprintf(sh.script, bb, cl), sh.n, from == "init", pl, pay)
					})
				}
			}
		}
	}
}

func userPidTree(t *testing.T, script string, n int, fromInit bool, placement, payload string) {
	// The tree takes pids from a free window, and the restore's own
	// processes (nsinit restore, its runtime threads) start above it: the
	// killed tree's pids are otherwise the next ones the host hands out.
	base := freeBase(t, 20000, 100)
	setHostCursor(t, base-1)
	cmd := exec.Command("/bin/busybox", "sh", "-c", script)
	cmd.Dir = "/" // a cwd every uid of the tree can enter
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	outer := cmd.Process.Pid
	t.Cleanup(func() { rtKill(t, outer, nil) })
	all, err := rtSettle(outer, n, 20*time.Second)
	if err != nil {
		t.Fatalf("the tree did not form: %v", err)
	}
	root := outer
	if fromInit {
		for pid, tk := range all {
			if tk.PPid == outer {
				root = pid
			}
		}
		t.Cleanup(func() { rtKill(t, root, nil) })
	}
	before, err := rtView(root)
	if err != nil {
		t.Fatal(err)
	}
	userPidShape(t, before)
	rootS := strconv.Itoa(root)
	img := filepath.Join(t.TempDir(), "img")
	if out, err := rtRun(t, nil, "dump", "-t", rootS, "-D", img, "--kill"); err != nil {
		t.Fatalf("dump --kill: %v\n%s", err, out)
	}
	if !fromInit {
		cmd.Wait()
	}
	if err := rtGone(before); err != nil {
		t.Fatalf("after dump --kill: %v", err)
	}
	cmd.Wait() // `unshare -f` and clonens exit when their child dies
	setHostCursor(t, base+99)
	out, err := rtRun(t, nil, "restore", "-D", img, "-d", "--placement", placement, "--payload", payload)
	if err != nil {
		if strings.Contains(out, "pid already taken") {
			t.Skipf("host busy: %s", strings.TrimSpace(out))
		}
		plan, _ := rtRun(t, nil, "restore", "-D", img, "--dry-run", "--placement", placement, "--payload", payload)
		t.Fatalf("restore: %v\n%s\nplan:\n%s", err, out, plan)
	}
	stopped := payload == "stopped"
	after, err := rtSettle(root, len(before), 10*time.Second)
	if err != nil {
		after, _ = rtView(root)
		t.Errorf("restored tree does not settle: %v", err)
	}
	if a := after[root]; a != nil {
		a.PPid = before[root].PPid // the restorer's subreaper, not the outer command
	}
	for _, d := range rtCompare(before, after, stopped) {
		t.Error(d)
	}
	userPidShape(t, after)
	if out, err := rtRun(t, nil, "check", "-t", rootS, "-D", img); err != nil {
		left := rtCheckFindings(out, stopped)
		if len(left) > 0 || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("nsinit check: %v\n%s", err, strings.Join(left, "\n"))
		}
	}
}

// userPidShape checks that a view has the shape the test is about: the
// init of every pid namespace but the host's is in the user namespace that
// owns it, and that user namespace is not its parent's (created with it).
func userPidShape(t *testing.T, v map[int]*rtTask) {
	t.Helper()
	inits := 0
	for _, tk := range v {
		if !strings.HasSuffix(tk.NSpid, "\t1") && !strings.HasSuffix(tk.NSpid, " 1") {
			continue
		}
		inits++
		if tk.NS["pid-user"] != tk.NS["user"] {
			t.Errorf("init %s: its pid ns is owned by %s, it is in %s", tk.NSpid, tk.NS["pid-user"], tk.NS["user"])
		}
		if p := v[tk.PPid]; p != nil && p.NS["pid-user"] == tk.NS["pid-user"] {
			t.Errorf("init %s: its pid ns has the owner of its parent's, %s", tk.NSpid, tk.NS["pid-user"])
		}
	}
	if inits != 2 && inits != 1 {
		t.Errorf("%d pid namespace inits, want 2 (1 from the first init)", inits)
	}
}

// setHostCursor points the host's ns_last_pid at v.
func setHostCursor(t *testing.T, v int) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(v)), 0); err != nil {
		t.Fatal(err)
	}
}

// clonedUserPidTree is the image of the "clone" shape: A (host user ns)
// cloned B with CLONE_NEWUSER|CLONE_NEWPID (B: PID 1 of P2, owned by U61);
// B's child C did the same for D (PID 1 of P3, owned by U62, a child of
// U61). fromInit drops A: the image's root is B, whose creator is outside.
func clonedUserPidTree(fromInit bool) *pstree.Tree {
	b := nestedUserNS()
	b.tr.Namespace(1).Owner, b.tr.Namespace(2).Owner, b.tr.Namespace(3).Owner = 60, 61, 62
	in := func(ns, user pstree.NSID, uid uint32, pids []int, ppid int, sid int) {
		sids, pgids := make([]int, len(pids)), make([]int, len(pids))
		sids[0], pgids[0] = sid, sid
		if sid == 22301 {
			sids[1], pgids[1] = 1, 1
		}
		t := b.task(ns, pids, ppid, sids, pgids)
		t.NS[pstree.UserNS] = user
		t.Creds = pstree.Creds{UID: uid, EUID: uid, SUID: uid, FSUID: uid, GID: uid, EGID: uid, SGID: uid, FSGID: uid}
	}
	ppid := 0
	if !fromInit {
		in(1, 60, 0, []int{22300}, 0, 22300)
		ppid = 22300
	}
	in(2, 61, 100000, []int{22301, 1}, ppid, 22301)
	in(2, 61, 100000, []int{22302, 2}, 22301, 22301)
	in(3, 62, 101000, []int{22303, 3, 1}, 22302, 22301)
	return &b.tr
}

// TestPlanUserPidTogether plans the clone shape, from the outer task and
// from the first init, in both placements and payloads (every plan is
// replayed through the model as it is made): each init is cloned with
// CLONE_NEWUSER by a creator in the parent user ns, whose maps that
// parent's member writes next; set_tid sets every level the creator's
// user ns owns or is above, and cursors give the others.
func TestPlanUserPidTogether(t *testing.T) {
	for _, fromInit := range []bool{false, true} {
		for _, pl := range []Placement{PlaceSetTID, PlaceLastPID} {
			for _, pay := range []Payload{PayloadExec, PayloadStopped} {
				name := fmt.Sprintf("fromInit=%v/placement=%d/payload=%d", fromInit, pl, pay)
				p := mustPlan(t, clonedUserPidTree(fromInit), Options{Placement: pl, Payload: pay, Features: Features{MultiLevelSetTID: true}})
				var got []string
				for _, s := range p.Steps {
					if s.Op == OpClone && s.NewPIDNS {
						got = append(got, fmt.Sprintf("%s: %s from=%d", p.name(s.Actor), p.describe(&s), s.SetFrom))
					}
				}
				// C, in U61, has CAP_CHECKPOINT_RESTORE over level 1
				// (owned by U61) and the new level, not over level 0: the
				// host cursor gives that one.
				inner := "task 22302/2: clone task 22303/3/1 CLONE_NEWUSER(user 62) CLONE_NEWPID set_tid from=1"
				first := "task 22300: clone task 22301/1 CLONE_NEWUSER(user 61) CLONE_NEWPID set_tid from=0"
				if fromInit {
					first = "helper 0: clone task 22301/1 CLONE_NEWUSER(user 61) CLONE_NEWPID CLONE_PARENT set_tid from=0"
				}
				if pl == PlaceLastPID {
					// cursors at every level, pid 1 needs nothing
					first = strings.Replace(strings.Replace(first, " set_tid", "", 1), "from=0", "from=2", 1)
					inner = strings.Replace(strings.Replace(inner, " set_tid", "", 1), "from=1", "from=3", 1)
				}
				want := []string{first, inner}
				if !slices.Equal(got, want) {
					t.Errorf("%s: pid ns inits cloned as\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
			}
		}
	}
	// An init above its pid ns's owner: the kernel has no such history.
	bad := clonedUserPidTree(false)
	bad.Namespace(2).Owner = 62
	if _, err := NewPlan(bad, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("pid ns owned by a user ns below its init's: %v, want ErrUnsupported", err)
	}
}

// TestPlanUserStages plans the clone shape after A, once B exists, went
// down to a user namespace of its own (U63, a child of the restorer's):
// the kernel's history is A cloning B with CLONE_NEWUSER|CLONE_NEWPID from
// the restorer's user namespace, then unshare(CLONE_NEWUSER). A born into
// U63 could not clone B (U61's parent is U60, and B's pid namespace would
// be owned by U63): the planner keeps A in U60 until B is cloned and moves
// it after its last kid (user namespace stages, planner_userstage.go).
func TestPlanUserStages(t *testing.T) {
	tr := clonedUserPidTree(false)
	u := pstree.Namespace{ID: 63, Kind: pstree.UserNS, Parent: 60, SetgroupsAllowed: true,
		UIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 1}}}
	u.GIDMap = u.UIDMap
	tr.Namespaces = append(tr.Namespaces, u)
	tr.Tasks[0].NS[pstree.UserNS] = 63
	for _, pl := range []Placement{PlaceSetTID, PlaceLastPID} {
		for _, pay := range []Payload{PayloadExec, PayloadStopped} {
			p := mustPlan(t, tr, Options{Placement: pl, Payload: pay, Features: Features{MultiLevelSetTID: true}})
			clone, move := -1, -1
			for i, s := range p.Steps {
				switch {
				case s.Op == OpClone && s.Target == 1:
					clone = i
				case s.Op == OpUnshare && s.Actor == 0 && s.NS[pstree.UserNS] == 63:
					move = i
				}
			}
			if clone < 0 || move < clone {
				t.Errorf("placement=%d payload=%d: B cloned at step %d, A's unshare of U63 at %d; want the clone first:\n%s", pl, pay, clone, move, p)
			}
		}
	}
}
