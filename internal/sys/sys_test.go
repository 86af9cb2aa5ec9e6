package sys

import (
	"errors"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestSetTIDReversesOutermostFirst(t *testing.T) {
	dst := make([]int32, MaxSetTID)
	n, err := SetTID(dst, []int{31077, 277, 377, 77})
	if err != nil || n != 4 || !reflect.DeepEqual(dst[:n], []int32{77, 377, 277, 31077}) {
		t.Fatalf("SetTID = %v %v %v", n, dst[:n], err)
	}
	// Unset outer levels are left to the kernel (F2.1).
	n, err = SetTID(dst, []int{0, 0, 5})
	if err != nil || n != 1 || dst[0] != 5 {
		t.Fatalf("partial SetTID = %v %v %v", n, dst[:n], err)
	}
	for _, bad := range [][]int{{5, 0}, {-1}, make([]int, 40)} {
		if bad[0] == 0 && len(bad) == 40 {
			for i := range bad {
				bad[i] = i + 1
			}
		}
		if _, err := SetTID(dst, bad); !errors.Is(err, ErrBadPIDs) {
			t.Errorf("SetTID(%v) err = %v, want ErrBadPIDs", bad, err)
		}
	}
	if CloneArgsSize != 88 {
		t.Fatalf("clone_args size %d, want 88", CloneArgsSize)
	}
}

func TestParseFdinfoNSpid(t *testing.T) {
	got, err := ParseFdinfoNSpid([]byte("pos:\t0\nflags:\t02000002\nPid:\t31077\nNSpid:\t31077\t277\t1\n"))
	if err != nil || !reflect.DeepEqual(got, []int{31077, 277, 1}) {
		t.Fatalf("got %v %v", got, err)
	}
	if _, err := ParseFdinfoNSpid([]byte("Pid:\t-1\nNSpid:\t-1\n")); !errors.Is(err, ErrReaped) {
		t.Fatalf("reaped: %v", err)
	}
	for _, bad := range []string{"", "NSpid:\n", "NSpid:\tx\n"} {
		if _, err := ParseFdinfoNSpid([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestPidfdLifecycle runs a real child: pidfd_open, NSpid through fdinfo,
// kill and reap through the pidfd, and no FD left open.
func TestPidfdLifecycle(t *testing.T) {
	before := OpenFDs()
	cmd := exec.Command("/bin/busybox", "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("busybox: %v", err)
	}
	fd, err := PidfdOpen(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatal(err)
	}
	defer fd.Close()
	pids, err := FdinfoNSpid(fd.Int())
	if err != nil || pids[0] != cmd.Process.Pid {
		t.Errorf("NSpid = %v %v, want [%d ...]", pids, err, cmd.Process.Pid)
	}
	if ok, _, err := WaitPidfd(fd.Int(), unix.WNOHANG); ok || err != nil {
		t.Errorf("live child: reaped=%v err=%v", ok, err)
	}
	if err := PidfdKill(fd.Int(), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ok, st, err := WaitPidfd(fd.Int(), 0)
	if !ok || err != nil || !st.Signaled() || st.Signal() != unix.SIGKILL {
		t.Errorf("wait = %v %v %v", ok, st, err)
	}
	if _, err := FdinfoNSpid(fd.Int()); !errors.Is(err, ErrReaped) {
		t.Errorf("after reap: %v", err)
	}
	fd.Close()
	fd.Close()
	if OpenFDs() != before {
		t.Errorf("fd leak: %d open, want %d", OpenFDs(), before)
	}
}

// TestSetTIDIsPidT: clone3 reads set_tid as pid_t entries. Two entries
// (pid 1 of a new namespace, pid 1 here) reach pid allocation and fail
// with EEXIST (pid 1 is always taken here); a u64 array reads as {1, 0}
// and fails the argument check with EINVAL. Nothing is created either way.
func TestSetTIDIsPidT(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE)")
	}
	try := func(tids unsafe.Pointer) unix.Errno {
		args := CloneArgs{Flags: CLONE_NEWPID, ExitSignal: uint64(unix.SIGCHLD), SetTID: uint64(uintptr(tids)), SetTIDSize: 2}
		r, _, e := unix.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), CloneArgsSize, 0)
		if e == 0 && r == 0 {
			unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
		}
		if e == 0 {
			t.Fatalf("clone3 created pid %d", r)
		}
		return e
	}
	var pidT [2]int32
	n, err := SetTID(pidT[:], []int{1, 1})
	if err != nil || n != 2 {
		t.Fatal(n, err)
	}
	if e := try(unsafe.Pointer(&pidT[0])); e != unix.EEXIST {
		t.Errorf("two pid_t entries: %v, want EEXIST", e)
	}
	u64 := [2]uint64{1, 1}
	if e := try(unsafe.Pointer(&u64[0])); e != unix.EINVAL {
		t.Errorf("two u64 entries: %v, want EINVAL (read as {1, 0})", e)
	}
}
