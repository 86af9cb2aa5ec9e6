package restorer

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestE2EShellJob: a tree started from a shell belongs to the shell's
// session and group, whose leader is outside the tree (issue #18, item 2).
// Restored from another session, or after the shell is gone, it is refused
// with the session named; with --shell-job it takes the restorer's session
// and group; restored from the session it was in, it is exact without it.
func TestE2EShellJob(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	shell := exec.Command(self, "/bin/busybox", "sleep", "100000")
	shell.Env = append(os.Environ(), realtreeRoleEnv+"=session")
	stdout, err := shell.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := shell.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shell.Process.Kill(); shell.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the shell's child: %v", err)
	}
	root, _ := strconv.Atoi(strings.TrimSpace(line))
	sid := shell.Process.Pid
	dir := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(root), "-D", dir, "--kill"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	waitPidGone(t, root) // the shell reaps it

	out, err := nsinit(t, "restore", "-D", dir, "-d")
	if exitCode(err) != 204 || !strings.Contains(out, fmt.Sprintf("session %d, led from outside the tree", sid)) || !strings.Contains(out, "--shell-job") {
		t.Fatalf("restore from another session: %v, want exit 204 naming session %d:\n%s", err, sid, out)
	}
	shell.Process.Kill()
	shell.Wait()
	out, err = nsinit(t, "restore", "-D", dir, "-d")
	if exitCode(err) != 204 || !strings.Contains(out, "no longer exists") {
		t.Fatalf("restore after the shell died: %v, want exit 204 saying its leader is gone:\n%s", err, out)
	}

	out, err = nsinit(t, "restore", "-D", dir, "-d", "--shell-job")
	if err != nil {
		t.Fatalf("restore --shell-job: %v\n%s", err, out)
	}
	got := restoredRoot(t, out)
	if got != root {
		t.Errorf("restored root is pid %d, want %d", got, root)
	}
	ownSID, _ := unix.Getsid(0)
	wantSession(t, got, ownSID, unix.Getpgrp())

	// Started from this test's own session and group, it needs nothing.
	dir2 := t.TempDir()
	child := exec.Command("/bin/busybox", "sleep", "100000")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	pid := child.Process.Pid
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL); unix.Wait4(pid, nil, 0, nil) })
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(pid), "-D", dir2, "--kill"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	child.Wait()
	if out, err = nsinit(t, "restore", "-D", dir2, "-d"); err != nil {
		t.Fatalf("restore from the tree's own session: %v\n%s", err, out)
	}
	if got := restoredRoot(t, out); got != pid {
		t.Errorf("restored root is pid %d, want %d", got, pid)
	}
	wantSession(t, pid, ownSID, unix.Getpgrp())
}

// restoredRoot parses the root pid `restore -d` prints last, and reaps the
// root at the end of the test (it is this process's child: the restorer
// clones it as its own sibling).
func restoredRoot(t *testing.T, out string) int {
	t.Helper()
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("restore -d printed nothing")
	}
	pid, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatalf("restore -d printed %q, not a pid", out)
	}
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL); unix.Wait4(pid, nil, unix.WALL, nil) })
	return pid
}

// wantSession checks pid's session and group at level 0 through /proc.
func wantSession(t *testing.T, pid, sid, pgid int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if got := strings.Fields(testutil.Field(s, "NSsid"))[0]; got != strconv.Itoa(sid) {
		t.Errorf("pid %d: session %s, want %d", pid, got, sid)
	}
	if got := strings.Fields(testutil.Field(s, "NSpgid"))[0]; got != strconv.Itoa(pgid) {
		t.Errorf("pid %d: group %s, want %d", pid, got, pgid)
	}
}

// waitPidGone waits until pid no longer exists (its parent reaped it).
func waitPidGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return
		}
		if i == 60000 {
			t.Fatalf("pid %d still exists", pid)
		}
		time.Sleep(time.Millisecond)
	}
}
