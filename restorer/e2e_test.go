package restorer

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// nsinit runs the built binary with output to a file (restored payloads
// inherit it; a pipe would stay open as long as they live).
func nsinit(t *testing.T, args ...string) (string, error) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(testutil.Binary(t), args...)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}

// TestE2EDumpKillRestoreCheck goes through the built binary, as a user
// would: a real tree (built by restoring a hand-written image) is dumped
// and killed with `nsinit dump --kill`, re-created with `nsinit restore -d`
// from that dump, and `nsinit check` must find no difference between the
// restored tree and the dump.
func TestE2EDumpKillRestoreCheck(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	for name, mk := range map[string]func() *pstree.Tree{"f43": f43, "zombies": zombieTree, "deep": func() *pstree.Tree { return deepChain(8, 23000) }} {
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
