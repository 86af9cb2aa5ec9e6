package restorer

import (
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestE2EAgentWithoutCursorCapability: an nsinit agent that ran as PID 1
// without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE (a container's init
// under the default capability set) comes back with those capabilities,
// so it cannot put back its namespace's cursor itself; the restorer writes
// it through a probe instead, and the restore is exact.
func TestE2EAgentWithoutCursorCapability(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	for _, tool := range []string{"unshare", "setpriv", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, busybox-static)", tool)
		}
	}
	tree := exec.Command("unshare", "-p", "-f", "setpriv", "--bounding-set", "-sys_admin,-checkpoint_restore", "--",
		bin, "--", "busybox", "sh", "-c", "busybox sleep 1000 & exec busybox sleep 1001")
	tree.Dir = "/"
	if err := tree.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range testutil.Descendants(tree.Process.Pid) {
			unix.Kill(p, unix.SIGKILL)
		}
		tree.Wait()
	})
	for i := 0; ; i++ {
		if d := testutil.Descendants(tree.Process.Pid); len(d) == 4 && sleeping(d[2:]) {
			break
		}
		if i == 60000 {
			t.Fatalf("the tree never came up: %v", testutil.Descendants(tree.Process.Pid))
		}
		time.Sleep(time.Millisecond)
	}
	pids := testutil.Descendants(tree.Process.Pid)
	dir := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(tree.Process.Pid), "-D", dir, "--kill"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	tree.Wait()
	for _, p := range pids {
		reapGone(t, p)
	}
	out, err := nsinit(t, "restore", "-D", dir, "-d")
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	root := restoredRoot(t, out)
	t.Cleanup(func() {
		for _, p := range testutil.Descendants(root) {
			unix.Kill(p, unix.SIGKILL)
		}
		for _, p := range pids[1:] {
			reapGone(t, p)
		}
	})
	if out, err := nsinit(t, "check", "-t", strconv.Itoa(root), "-D", dir); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
}
