package restorer

import (
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
)

// sessionsBin builds testdata/sessions.c: the two session/group shapes of
// issue 12 that only a creator which died can leave behind.
func sessionsBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NSINIT_TEST_SESSIONS"); p != "" {
		return p
	}
	bin := filepath.Join(t.TempDir(), "sessions")
	if out, err := exec.Command("cc", "-O2", "-static", "-Wall", "-o", bin, "testdata/sessions.c").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/sessions.c (needs cc and a static libc): %v\n%s", err, out)
	}
	return bin
}

// leaverShapes are the trees sessions.c builds, each with the check that a
// view of it (before the dump and after the restore) has the shape the test
// is about, read from /proc alone: NSpid, PPid, NSpgid, NSsid.
var leaverShapes = []struct {
	name  string
	shape func(v map[int]*rtTask, root int) string // "" when v has it
}{
	{"orphan-session", orphanSessionShape},
	{"split-group", splitGroupShape},
	{"late-init", lateInitShape},
}

// TestE2ELeaverHelpers builds each shape for real with raw syscalls, dumps
// it with `nsinit dump --kill`, restores it with `nsinit restore -d` in
// both placements and both payloads, and compares /proc before and after
// (NSpid, PPid, NSpgid, NSsid, state, namespaces of every task, and no
// task more: the leaver helpers the plan needs are gone), then runs
// `nsinit check`.
func TestE2ELeaverHelpers(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	bin := sessionsBin(t)
	for _, sh := range leaverShapes {
		for _, pl := range []string{"set_tid", "ns_last_pid"} {
			for _, pay := range []string{"exec", "stopped"} {
				t.Run(strings.Join([]string{sh.name, pl, pay}, "/"), func(t *testing.T) {
					leaverTree(t, bin, sh.name, sh.shape, pl, pay)
				})
			}
		}
	}
}

func leaverTree(t *testing.T, bin, name string, shape func(map[int]*rtTask, int) string, placement, payload string) {
	// The tree takes pids from a free window; the restore's own processes
	// start above it (see userPidTree).
	base := freeBase(t, 20000, 100)
	setHostCursor(t, base-1)
	cmd := exec.Command(bin, name)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	t.Cleanup(func() { rtKill(t, root, nil) })
	n := map[string]int{"late-init": 5}[name]
	if n == 0 {
		n = 4
	}
	before, err := rtSettle(root, n, 20*time.Second)
	if err != nil {
		t.Fatalf("the tree did not form: %v", err)
	}
	if why := shape(before, root); why != "" {
		t.Fatalf("the tree is not the shape under test: %s\n%s", why, rtSig(before))
	}
	// The child namespace's cursor, as the next pid a fork there takes
	// (which moves it: the dump records the moved one).
	init := initOf(before)
	next := nextInnerPID(t, init)
	rootS := strconv.Itoa(root)
	img := filepath.Join(t.TempDir(), "img")
	if out, err := rtRun(t, nil, "dump", "-t", rootS, "-D", img, "--kill"); err != nil {
		t.Fatalf("dump --kill: %v\n%s", err, out)
	}
	cmd.Wait()
	if err := rtGone(before); err != nil {
		t.Fatalf("after dump --kill: %v", err)
	}
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
	for _, d := range rtCompare(before, after, stopped) {
		t.Error(d)
	}
	if why := shape(after, root); why != "" {
		t.Errorf("restored tree: %s", why)
	}
	// The leaver took a pid in the child namespace; the cursor is back
	// where the image has it all the same.
	if got := nextInnerPID(t, init); got != next+1 {
		t.Errorf("after the restore a fork in the child namespace gets pid %d, want %d", got, next+1)
	}
	if out, err := rtRun(t, nil, "check", "-t", rootS, "-D", img); err != nil {
		if left := rtCheckFindings(out, stopped); len(left) > 0 || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("nsinit check: %v\n%s", err, strings.Join(left, "\n"))
		}
	}
}

// ids splits an NS* field of /proc/PID/status into numbers, outermost
// first.
func ids(field string) []int {
	var n []int
	for _, f := range strings.Fields(field) {
		v, _ := strconv.Atoi(f)
		n = append(n, v)
	}
	return n
}

// ancestors lists the pids above pid in view v, through PPid.
func ancestors(v map[int]*rtTask, pid int) []int {
	var a []int
	for tk := v[pid]; tk != nil && len(a) <= len(v); tk = v[tk.PPid] {
		a = append(a, tk.PPid)
	}
	return a
}

// orphanSessionShape: a task T of a child pid namespace whose parent is
// that namespace's init, in a session whose leader S is alive at level 0,
// neither T's parent nor its ancestor (so only a member of S's session
// that entered T's namespace, and died, can have left T there).
func orphanSessionShape(v map[int]*rtTask, root int) string {
	for pid, tk := range v {
		p := ids(tk.NSpid)
		par := v[tk.PPid]
		if len(p) != 2 || p[1] == 1 || par == nil || ids(par.NSpid)[len(ids(par.NSpid))-1] != 1 {
			continue
		}
		sid := ids(tk.NSsid)
		s := v[sid[0]]
		switch {
		case s == nil || len(ids(s.NSpid)) != 1:
			return "T's session leader is not alive at level 0"
		case sid[1] != 0:
			return "T's session leader is visible in T's namespace"
		case slices.Contains(ancestors(v, pid), sid[0]):
			return "T's session leader is its ancestor"
		}
		return ""
	}
	return "no task of a child namespace is a child of its init"
}

// splitGroupShape: the init I of a child pid namespace is in a group
// whose leader died, with a member M at level 0; in I's namespace an
// orphan O, child of I, is in the session and group of the root R, whose
// leader lives at level 0.
func splitGroupShape(v map[int]*rtTask, root int) string {
	for _, tk := range v {
		p := ids(tk.NSpid)
		if len(p) != 2 || p[1] != 1 {
			continue
		}
		g := ids(tk.NSpgid)[0]
		if v[g] != nil {
			return "the init's group leader is alive"
		}
		outer := false
		for _, m := range v {
			outer = outer || (len(ids(m.NSpid)) == 1 && ids(m.NSpgid)[0] == g)
		}
		if !outer {
			return "the init's group has no member at level 0"
		}
		for _, o := range v {
			if o.PPid == p[0] && ids(o.NSpgid)[0] == root && ids(o.NSsid)[0] == root && ids(o.NSpgid)[1] == 0 {
				return ""
			}
		}
		return "no child of the init is in the root's group"
	}
	return "no child pid namespace"
}

// initOf is the level-0 pid of the init of the view's child namespace.
func initOf(v map[int]*rtTask) int {
	for pid, tk := range v {
		if p := ids(tk.NSpid); len(p) == 2 && p[1] == 1 {
			return pid
		}
	}
	return 0
}

// nextInnerPID forks a shell into the pid namespace of init and returns
// its pid there: the number right above that namespace's cursor (F1.3).
func nextInnerPID(t *testing.T, init int) int {
	t.Helper()
	out, err := exec.Command("/bin/busybox", "nsenter", "-t", strconv.Itoa(init), "-p", "/bin/busybox", "sh", "-c", "echo $$").CombinedOutput()
	n, perr := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || perr != nil {
		t.Fatalf("nsenter into the pid namespace of %d: %v %v\n%s", init, err, perr, out)
	}
	return n
}

// lateInitShape: a task T of a child pid namespace whose parent P lives at
// level 0 and leads another session than T's, the root's.
func lateInitShape(v map[int]*rtTask, root int) string {
	for _, tk := range v {
		p := ids(tk.NSpid)
		par := v[tk.PPid]
		if len(p) != 2 || p[1] == 1 || par == nil || len(ids(par.NSpid)) != 1 {
			continue
		}
		switch {
		case ids(tk.NSsid)[0] != root:
			return "T is not in the root's session"
		case ids(par.NSsid)[0] != tk.PPid:
			return "T's parent does not lead its own session"
		}
		return ""
	}
	return "no task of a child namespace has a parent at level 0"
}
