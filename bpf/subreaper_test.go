package bpf

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"unsafe"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// In the subreaper role the main goroutine keeps the main thread (the
// leader; package initialisation runs there, locked), so that the
// goroutine of subreaperChild runs on another thread.
func init() {
	if os.Getenv(roleEnv) == "subreaper" {
		runtime.LockOSThread()
	}
}

// subreaperChild makes its process a child subreaper from a thread that
// is not the leader (the flag is the process's), says "ready" and waits
// for stdin to close.
func subreaperChild() {
	done := make(chan error)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == os.Getpid() {
			done <- fmt.Errorf("on the leader thread")
			return
		}
		done <- unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}()
	if err := <-done; err != nil {
		fmt.Println("prctl:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	os.Exit(0)
}

// TestSubreapers: the task iterator names a process that made itself a
// child subreaper (from one of its threads), once, by its level-0 pid, and
// not a process that did not; for the test process it agrees with
// PR_GET_CHILD_SUBREAPER, the kernel's own answer for oneself.
func TestSubreapers(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF)
	needBusybox(t)
	start := func(role string) *exec.Cmd {
		cmd := exec.Command(os.Args[0])
		if role != "" {
			cmd.Env = append(os.Environ(), roleEnv+"="+role)
		} else {
			cmd = exec.Command("/bin/busybox", "sleep", "1000") // the test VM has busybox only
		}
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
		if role != "" {
			if l, _ := bufio.NewReader(out).ReadString('\n'); l != "ready\n" {
				t.Fatalf("role %s: %q", role, l)
			}
		}
		return cmd
	}
	sub, plain := start("subreaper"), start("")
	got, err := Subreapers()
	if err != nil {
		t.Fatal(err)
	}
	if !got[sub.Process.Pid] || got[plain.Process.Pid] {
		t.Errorf("subreaper %d: %v, plain %d: %v; want true, false", sub.Process.Pid, got[sub.Process.Pid], plain.Process.Pid, got[plain.Process.Pid])
	}
	var own int32 // PR_GET_CHILD_SUBREAPER stores it through arg2
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&own)), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got[os.Getpid()] != (own == 1) {
		t.Errorf("the test process: iterator says %v, PR_GET_CHILD_SUBREAPER %d", got[os.Getpid()], own)
	}
}
