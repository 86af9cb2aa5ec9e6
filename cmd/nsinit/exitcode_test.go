package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/restorer"
	"github.com/nsinit/nsinit/state"
	"golang.org/x/sys/unix"
)

// TestExitStatusClasses: each error class has its status, through any
// wrapping, and the first class wins (a raced host cursor is a taken pid).
func TestExitStatusClasses(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{fmt.Errorf("x"), exitFailure},
		{fmt.Errorf("step 3: %w: %w", restorer.ErrInterrupted, restorer.ErrPIDTaken), exitInterrupted},
		{fmt.Errorf("wait: %w", restorer.ErrTimeout), exitTimeout},
		{fmt.Errorf("agent: %w", agentconn.ErrTimeout), exitTimeout},
		{fmt.Errorf("freeze: %w", dump.ErrTimeout), exitTimeout},
		{fmt.Errorf("5 attempts: %w: %w", restorer.ErrHostRace, restorer.ErrPIDTaken), exitPIDTaken},
		{fmt.Errorf("clone: %w: %w", restorer.ErrPIDTaken, unix.EEXIST), exitPIDTaken},
		{fmt.Errorf("make thread [7 2 1] again: %w", state.ErrPIDTaken), exitPIDTaken},
		{fmt.Errorf("restore: %w", restorer.ErrCapability), exitCapability},
		{fmt.Errorf("load: %w", unix.EPERM), exitCapability},
		{fmt.Errorf("open: %w", unix.EACCES), exitCapability},
		{fmt.Errorf("plan: %w", restorer.ErrBadImage), exitBadImage},
		{fmt.Errorf("read: %w", imagefile.ErrFormat), exitBadImage},
		{fmt.Errorf("encode: %w", pstree.ErrInvalid), exitBadImage},
		{fmt.Errorf("read: %w", imagefile.ErrVersion), exitBadImage},
		{fmt.Errorf("read: %w", imagefile.ErrNotRegular), exitBadImage},
		{fmt.Errorf("plan: %w", restorer.ErrUnsupported), exitUnsupported},
		{fmt.Errorf("read: %w", dump.ErrUnrepresentable), exitUnsupported},
		{fmt.Errorf("load: %w", ebpf.ErrNotSupported), exitUnsupported},
		{fmt.Errorf("dump: %w after 4 attempts", dump.ErrRaced), exitRaced},
	} {
		if got := exitStatus(tc.err); got != tc.want {
			t.Errorf("%v: status %d, want %d", tc.err, got, tc.want)
		}
	}
	// None is a status a restored root killed by a signal exits with.
	for _, c := range []int{exitFailure, exitUsage, exitBadImage, exitPIDTaken, exitCapability, exitUnsupported, exitRaced, exitTimeout, exitInterrupted} {
		if c > 128 && c <= 128+64 {
			t.Errorf("status %d is also 128+signal", c)
		}
	}
}

// TestExitStatusBinary runs bin/nsinit into the failures that need no
// privilege to provoke: a bad command line, a malformed image, an image of
// another format version, a restore without the capability to choose pids.
func TestExitStatusBinary(t *testing.T) {
	garbage := t.TempDir()
	if err := os.WriteFile(filepath.Join(garbage, "pstree.img"), []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"dump", "--no-such-flag"}, exitUsage},
		{[]string{"restore"}, exitUsage},
		{[]string{"restore", "-D", garbage}, exitBadImage},
		{[]string{"restore", "-D", garbage, "--dry-run"}, exitBadImage},
		{[]string{"show", garbage}, exitBadImage},
		{[]string{"check", "-t", "1", "-D", garbage}, exitBadImage},
		{[]string{"restore", "-D", filepath.Join(garbage, "missing")}, exitFailure},
	} {
		if _, errOut, code := run(t, tc.args...); code != tc.want {
			t.Errorf("nsinit %q: status %d, want %d\n%s", tc.args, code, tc.want, errOut)
		}
	}
}

// TestExitStatusNoCapability: a restore by a user without
// CAP_CHECKPOINT_RESTORE is refused with exitCapability before anything is
// created.
func TestExitStatusNoCapability(t *testing.T) {
	testutil.Require(t, testutil.Root)
	dir := testutil.SharedTempDir(t, "nsinit-exit", 0o755)
	tr := oneTaskTree(30001)
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "pstree.img"), 0o644)
	cmd := exec.Command(testutil.Binary(t), "restore", "-D", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitCapability {
		t.Fatalf("restore as uid 65534: %v (want status %d)\n%s", err, exitCapability, out)
	}
}

// TestExitStatusPIDTaken: restoring an image whose pid a live process holds
// is refused with exitPIDTaken.
func TestExitStatusPIDTaken(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	holder := exec.Command("sleep", "1000")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	dir := t.TempDir()
	tr := oneTaskTree(holder.Process.Pid)
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := run(t, "restore", "-D", dir)
	if code != exitPIDTaken {
		t.Fatalf("restore over live pid %d: status %d, want %d\n%s", holder.Process.Pid, code, exitPIDTaken, errOut)
	}
	if want := "taken by \"sleep\" (tgid " + strconv.Itoa(holder.Process.Pid) + ")"; !contains(errOut, want) {
		t.Errorf("message lacks %q:\n%s", want, errOut)
	}
}

// oneTask is an image of a single task, session and group leader at pid.
func oneTask(pid int) pstree.Task {
	tk := pstree.Task{PIDs: []int{pid}, SIDs: []int{pid}, PGIDs: []int{pid},
		Exe: "/bin/sleep", Argv: []string{"sleep", "1000"}, Cwd: "/"}
	tk.NS[pstree.PidNS] = 1
	return tk
}

func oneTaskTree(pid int) *pstree.Tree {
	return &pstree.Tree{
		Namespaces: []pstree.Namespace{{ID: 1, Kind: pstree.PidNS}},
		Tasks:      []pstree.Task{oneTask(pid)},
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestPIDTakenByZombie: a pid held by a zombie is refused as taken, and
// the message says it is a zombie and which parent has not reaped it.
func TestPIDTakenByZombie(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	z := exec.Command("true")
	if err := z.Start(); err != nil {
		t.Fatal(err)
	}
	pid := z.Process.Pid
	t.Cleanup(func() { z.Wait() })
	// Wait for its exit, leaving it a zombie.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := imagefile.Write(dir, oneTaskTree(pid)); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := run(t, "restore", "-D", dir)
	if code != exitPIDTaken {
		t.Fatalf("restore over zombie %d: status %d, want %d\n%s", pid, code, exitPIDTaken, errOut)
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	want := fmt.Sprintf("is taken by a zombie \"true\" (tgid %d) that its parent %d %q has not reaped", pid, os.Getpid(), strings.TrimSpace(string(comm)))
	if !strings.Contains(errOut, want) {
		t.Errorf("message lacks %q:\n%s", want, errOut)
	}
}
