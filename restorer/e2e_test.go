package restorer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// nsinit runs the built binary (testutil.Run: output to a file).
func nsinit(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return testutil.Run(t, testutil.Binary(t), args...)
}

// TestE2EDumpKillRestoreCheck goes through the built binary, as a user
// would: a real tree (built by restoring a hand-written image) is dumped
// and killed with `nsinit dump --kill`, re-created with `nsinit restore -d`
// from that dump, and `nsinit check` must find no difference between the
// restored tree and the dump.
func TestE2EDumpKillRestoreCheck(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	for name, mk := range map[string]func() *pstree.Tree{"f43": f43, "zombies": zombieTree, "deep": func() *pstree.Tree { return deepChain(8, 23000) }, "pfc": pfcDumpable, "namespaces": nsTree, "userns": userTree} {
		t.Run(name, func(t *testing.T) {
			tr := place(t, sleepers(mk()))
			t.Cleanup(func() { killTree(t, tr, &Restored{}) })
			src := t.TempDir()
			if err := imagefile.Write(src, tr); err != nil {
				t.Fatal(err)
			}
			if out, err := nsinit(t, "restore", "-D", src, "--dry-run"); err != nil || !strings.Contains(out, "verify") {
				t.Fatalf("dry run: %v\n%s", err, out)
			}
			out, err := nsinit(t, "restore", "-D", src, "-d")
			if err != nil {
				t.Fatalf("restore of the hand-written image: %v\n%s", err, out)
			}
			root := strconv.Itoa(tr.Tasks[0].PID())
			if strings.TrimSpace(out) != root {
				t.Fatalf("restore -d printed %q, want %s", out, root)
			}
			img := t.TempDir()
			if out, err := nsinit(t, "dump", "-t", root, "-D", img, "--unchecked", "--kill"); err != nil {
				t.Fatalf("dump --kill: %v\n%s", err, out)
			}
			waitGone(t, tr)
			keepCursorAbove(t, tr)
			pidfile := filepath.Join(t.TempDir(), "pid")
			if out, err := nsinit(t, "restore", "-D", img, "-d", "--pidfile", pidfile); err != nil {
				t.Fatalf("restore of the dump: %v\n%s", err, out)
			}
			if b, _ := os.ReadFile(pidfile); strings.TrimSpace(string(b)) != root {
				t.Errorf("pidfile %q, want %s", b, root)
			}
			if out, err := nsinit(t, "check", "-t", root, "-D", img); err != nil {
				t.Errorf("check: %v\n%s", err, out)
			}
			// and, independently of check, against the hand-written image
			checkTree(t, tr, PayloadExec)
		})
	}
}

// waitGone waits until the tasks of tr are gone after `dump --kill`.
func waitGone(t *testing.T, tr *pstree.Tree) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		alive := false
		for _, tk := range tr.Tasks {
			if _, err := os.Stat("/proc/" + strconv.Itoa(tk.PID())); err == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
		// The restored root's parent, `restore -d`, exited: the test
		// process (a subreaper) inherited it and reaps it here.
		var ws unix.WaitStatus
		if pid, _ := unix.Wait4(-1, &ws, unix.WNOHANG|unix.WALL, nil); pid <= 0 {
			unix.Nanosleep(&unix.Timespec{Nsec: 5e6}, nil)
		}
	}
	t.Fatal("dumped tree not gone after --kill")
}

// pfcDumpable is pfcTree without the task whose pid_for_children has no
// init yet: the kernel shows no pid_for_children link for it (ENOENT), which
// `nsinit dump` takes for a task that went away.
func pfcDumpable() *pstree.Tree {
	tr := pfcTree()
	tr.Tasks = tr.Tasks[:4]
	tr.Namespaces = tr.Namespaces[:3]
	return tr
}

// TestE2EUnshareWithoutFork dumps, kills, restores and checks a real tree
// whose root did `unshare -p` without -f and then exec'd after forking: its
// first child is PID 1 of the new namespace and the root's pid_for_children
// is that child namespace, not its own.
func TestE2EUnshareWithoutFork(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	bb := "/bin/busybox"
	cmd := exec.Command(bb, "unshare", "-p", bb, "sh", "-c", bb+" sleep 1001 & exec "+bb+" sleep 1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	rootS := strconv.Itoa(root)
	t.Cleanup(func() {
		b, _ := os.ReadFile("/proc/" + rootS + "/task/" + rootS + "/children")
		for _, c := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(c)
			unix.Kill(n, unix.SIGKILL)
		}
		unix.Kill(root, unix.SIGKILL)
		cmd.Wait()
	})
	var kids []string
	for i := 0; i < 500; i++ {
		b, _ := os.ReadFile("/proc/" + rootS + "/cmdline")
		c, _ := os.ReadFile("/proc/" + rootS + "/task/" + rootS + "/children")
		kids = strings.Fields(string(c))
		if strings.Contains(string(b), "1000") && len(kids) == 1 {
			break
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e7}, nil)
	}
	if len(kids) != 1 {
		t.Fatalf("the tree did not form: children %v", kids)
	}
	img := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", rootS, "-D", img, "--unchecked", "--kill"); err != nil {
		t.Fatalf("dump --kill: %v\n%s", err, out)
	}
	cmd.Wait()
	tr, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	if pfc := tr.Tasks[0].NS[pstree.PidForChildrenNS]; len(tr.Tasks) != 2 || pfc != tr.Tasks[1].NS[pstree.PidNS] || pfc == tr.Tasks[0].NS[pstree.PidNS] {
		t.Fatalf("dump: %d tasks, root's pid_for_children %d, want the child's namespace", len(tr.Tasks), pfc)
	}
	waitGone(t, tr)
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	if out, err := nsinit(t, "restore", "-D", img, "-d"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	if out, err := nsinit(t, "check", "-t", rootS, "-D", img); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
	checkTree(t, tr, PayloadExec)
}

// TestE2ERestoreWithoutCapability: a restorer without CAP_CHECKPOINT_RESTORE
// and CAP_SYS_ADMIN is refused up front, by name, and creates nothing.
func TestE2ERestoreWithoutCapability(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	tr := place(t, simpleTree(20000))
	dir := t.TempDir()
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	// root, with the two capabilities out of its bounding set
	out, err := exec.Command("setpriv", "--bounding-set", "-sys_admin,-checkpoint_restore", bin, "restore", "-D", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN") {
		t.Errorf("restore without the capabilities: %v\n%s", err, out)
	}
	assertGone(t, tr)
}

// dumpKilled dumps the tree rooted at cmd's process through the binary
// (with flags), killing it, reaps the root and reads the image back.
func dumpKilled(t *testing.T, cmd *exec.Cmd, flags ...string) (*pstree.Tree, string) {
	t.Helper()
	img := t.TempDir()
	args := append([]string{"dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", img, "--kill"}, flags...)
	if out, err := nsinit(t, args...); err != nil {
		t.Fatalf("dump --kill: %v\n%s", err, out)
	}
	cmd.Wait() // the root, killed by the dump
	tr, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	keepCursorAbove(t, tr)
	return tr, img
}

// startCmdTree starts cmd (in /) as the root of a tree (startScriptTree:
// in a session of its own, killed at the end of the test) and waits until
// waitTree says it is up.
func startCmdTree(t *testing.T, cmd *exec.Cmd, n int, ready func([]int) bool) []int {
	t.Helper()
	cmd.Dir = "/"
	startScriptTree(t, cmd)
	return waitTree(t, cmd.Process.Pid, n, ready)
}

// waitTree waits until root and its descendants are n tasks for which
// ready holds (say, every program has exec'd), and returns them.
func waitTree(t *testing.T, root, n int, ready func([]int) bool) []int {
	t.Helper()
	for i := 0; ; i++ {
		if d := testutil.Descendants(root); len(d) == n && ready(d) {
			return d
		}
		if i == 60000 {
			t.Fatalf("the tree of %d never came up: %v", root, testutil.Descendants(root))
		}
		time.Sleep(time.Millisecond)
	}
}

// dumpAndReap dumps the tree of pids[0] with --kill into a new directory
// and waits until every pid is gone, reaping those left to this process (a
// subreaper). The root is reaped through cmd when the test started it (so
// that its cleanup knows the pid is no longer its own), else like the rest.
func dumpAndReap(t *testing.T, cmd *exec.Cmd, pids []int) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(pids[0]), "-D", dir, "--kill"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	if cmd != nil {
		cmd.Wait()
		pids = pids[1:]
	}
	for _, p := range pids {
		reapGone(t, p)
	}
	return dir
}

// killAtEnd kills the restored tree of root at the end of the test and
// waits for pids, reaping those left to this process.
func killAtEnd(t *testing.T, root int, pids []int) {
	t.Cleanup(func() {
		for _, p := range testutil.Descendants(root) {
			unix.Kill(p, unix.SIGKILL)
		}
		for _, p := range pids {
			reapGone(t, p)
		}
	})
}
