package nscursor

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestReadWrite reads the cursor of a fresh pid namespace from outside, for
// several cursor values, and checks that the probe left the cursor as it
// was (the namespace's next fork gets the pid it would have had); then
// writes it from outside and checks the next fork there.
func TestReadWrite(t *testing.T) {
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
		got, err := Read(fd)
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
	for _, cursor := range []int{4000, 20} {
		if err := Write(fd, cursor); err != nil {
			t.Fatal(err)
		}
		if next := inside("cat /proc/sys/kernel/ns_last_pid"); next != strconv.Itoa(cursor+1) {
			t.Errorf("after Write(%d) the next pid was %s, want %d", cursor, next, cursor+1)
		}
	}
}
