package dump

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// TestProbeLastPID reads the cursor of a fresh pid namespace from outside,
// for several cursor values, and checks that the probe left the cursor as
// it was: the namespace's next fork gets the pid it would have had.
func TestProbeLastPID(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox not found (apt-get install busybox-static)")
	}
	init := exec.Command(bb, "sleep", "1000")
	init.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	if err := init.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { init.Process.Kill(); init.Wait() }()
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/pid", init.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	// inside runs a shell in the namespace: it sets the cursor, then
	// reports the pid its next child gets.
	inside := func(script string) string {
		out, err := exec.Command(bb, "nsenter", "-t", strconv.Itoa(init.Process.Pid), "-p", "--",
			bb, "sh", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, cursor := range []int{1, 50, 7000} {
		inside(fmt.Sprintf("echo %d > /proc/sys/kernel/ns_last_pid", cursor))
		got, err := ProbeLastPID(fd)
		if err != nil {
			t.Fatal(err)
		}
		// The shell wrote the cursor after it was forked: nothing has
		// forked in the namespace since.
		if got != cursor {
			t.Errorf("cursor set to %d: probe read %d", cursor, got)
		}
		// Left as found: the next fork in the namespace gets got+1.
		if next := inside("cat /proc/sys/kernel/ns_last_pid"); next != strconv.Itoa(got+1) {
			t.Errorf("after the probe the next pid was %s, want %d", next, got+1)
		}
	}
	if _, err := os.Stat("/proc/self/ns/pid"); err != nil {
		t.Fatal(err)
	}
}

// TestDumpUnbornPidNS: after unshare(CLONE_NEWPID) and before its first
// child, a task's pid_for_children namespace has no init and the kernel
// hides its link. The dump records it as a child of the task's pid
// namespace that no task is in yet.
func TestDumpUnbornPidNS(t *testing.T) {
	tt := startTree(t, `exec busybox unshare -p busybox sleep 1000`, 1, false)
	defer tt.cleanup(t)
	tr, err := Dump(tt.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	task := tr.Tasks[0]
	pfc := tr.Namespace(task.NS[pstree.PidForChildrenNS])
	if pfc == nil || pfc.ID == task.NS[pstree.PidNS] {
		t.Fatalf("pid_for_children %v: want a namespace of its own", task.NS[pstree.PidForChildrenNS])
	}
	if pfc.Kind != pstree.PidNS || pfc.Parent != task.NS[pstree.PidNS] || pfc.Level != task.Level()+1 || pfc.Owner != task.NS[pstree.UserNS] {
		t.Errorf("unborn namespace recorded as %+v; want a pid namespace below %d at level %d owned by %d",
			*pfc, task.NS[pstree.PidNS], task.Level()+1, task.NS[pstree.UserNS])
	}
	if err := pstree.Validate(tr); err != nil {
		t.Error(err)
	}
}
