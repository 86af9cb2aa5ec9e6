package restorer

import (
	"os/exec"
	"strconv"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
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
	pids := startCmdTree(t, tree, 4, func(d []int) bool { return sleeping(d[2:]) })
	dir := dumpAndReap(t, tree, pids)
	out, err := nsinit(t, "restore", "-D", dir, "-d")
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	root := restoredRoot(t, out)
	killAtEnd(t, root, pids[1:])
	if out, err := nsinit(t, "check", "-t", strconv.Itoa(root), "-D", dir); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
}
