package bpf

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

func newGuard(t *testing.T) *Guard {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.BPF)
	g, err := NewGuard()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// nsTask is one task of a pid namespace as /proc shows it: identity (pid
// and start time), state and kernel flags.
type nsTask struct {
	pid   int
	start uint64
	state byte
	flags uint64
}

// pfExiting is PF_EXITING, stat's field 9: the task has begun do_exit.
const pfExiting = 0x4

// nsTasks lists the processes of a pid namespace from /proc (what a dump
// reads), by pid.
func nsTasks(t *testing.T, ns uint32) map[int]nsTask {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	out := map[int]nsTask{}
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st) != nil || uint32(st.Ino) != ns {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:])) // f[0] is field 3
		if i < 0 || len(f) < 20 {
			t.Fatalf("/proc/%d/stat: %q", pid, b)
		}
		task := nsTask{pid: pid, state: f[0][0]}
		fmt.Sscan(f[6], &task.flags)  // field 9
		fmt.Sscan(f[19], &task.start) // field 22
		out[pid] = task
	}
	return out
}

// running: not a zombie, not dead, not exiting.
func (t nsTask) running() bool {
	return t.state != 'Z' && t.state != 'X' && t.flags&pfExiting == 0
}

// TestGuardDetectsEveryRace checks the guard's contract (docs/ebpf.md):
// every exit that begins after Arm has returned is reported. A task /proc
// shows running after Arm (no PF_EXITING) has not begun do_exit; when /proc
// later shows it a zombie or gone (or its pid reused), its exit tracepoint,
// which fires after PF_EXITING is set and before the task turns zombie, has
// fired in between. So the test arms the guard on a namespace whose tree
// forks and exits all the time, reads /proc until one task seen running
// since Arm has ended, and disarms: the guard must report a move every
// time. Tasks already exiting at Arm are ignored: the contract leaves them
// to the dump, which refuses them. On a quiet tree the guard must report
// nothing every time. The verdict follows what /proc shows, never timing,
// and two CPU hogs run beside it: a task descheduled between its exit
// tracepoint and its zombie state once made this test fail 3 times in 20.
func TestGuardDetectsEveryRace(t *testing.T) {
	g := newGuard(t)
	busy := startShell(t)
	busy.run("while :; do /bin/busybox true; done &")
	quiet := startShell(t)
	quiet.run("/bin/busybox sleep 1000 &")
	for range 2 {
		hog := exec.Command(busybox, "sh", "-c", "while :; do :; done")
		hog.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := hog.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hog.Process.Kill(); hog.Wait() })
	}

	for i := range 20 {
		if err := g.Arm(nil, []int{busy.nsFD}); err != nil {
			t.Fatal(err)
		}
		seen := map[int]nsTask{} // running when read after Arm
		var ended nsTask
	read:
		for {
			now := nsTasks(t, busy.inode)
			for pid, was := range seen {
				if is, ok := now[pid]; !ok || is.start != was.start || is.state == 'Z' || is.state == 'X' {
					ended = was
					break read
				}
			}
			for pid, task := range now {
				if _, ok := seen[pid]; !ok && task.running() {
					seen[pid] = task
				}
			}
		}
		moved, err := g.Disarm()
		if err != nil {
			t.Fatal(err)
		}
		if len(moved) == 0 {
			t.Fatalf("round %d: pid %d was running after Arm and has ended, but the guard saw nothing", i, ended.pid)
		}
		if i == 0 {
			t.Logf("moved: %q", moved[:min(4, len(moved))])
		}

		if err := g.Arm(nil, []int{quiet.nsFD}); err != nil {
			t.Fatal(err)
		}
		nsTasks(t, quiet.inode)
		moved, err = g.Disarm()
		if err != nil || len(moved) != 0 {
			t.Fatalf("round %d: quiet tree: moved %q, err %v", i, moved, err)
		}
	}
}

// TestGuardWatchesPids: level-0 tasks are watched by pid, and what they
// fork is watched too (grandchildren included), while an unwatched level-0
// fork loop runs beside them.
func TestGuardWatchesPids(t *testing.T) {
	needBusybox(t)
	g := newGuard(t)
	noise := exec.Command(busybox, "sh", "-c", "while :; do /bin/busybox true; done")
	if err := noise.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { noise.Process.Kill(); noise.Wait() }()

	sh := exec.Command(busybox, "sh", "-s")
	sh.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, _ := sh.StdinPipe()
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sh.Process.Kill(); sh.Wait() }()
	// Let the shell start: its own exec is over once it waits in read(2)
	// for its stdin. (Its comm turns "busybox" inside the exec, before
	// the exec's tracepoint fires, which an armed guard would then see.)
	procs := procfs.New("")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sh.Process.Pid))
		if nr, _ := procs.Syscall(sh.Process.Pid); strings.TrimSpace(string(b)) == "busybox" && nr == unix.SYS_READ {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("shell did not start")
		}
	}

	if err := g.Arm([]int{sh.Process.Pid}, nil); err != nil {
		t.Fatal(err)
	}
	// sh forks A (sh -c), A forks B (true) and exits 4.
	fmt.Fprintln(in, "/bin/busybox sh -c '/bin/busybox true; exit 4'; exit 0")
	sh.Wait()
	moved, err := g.Disarm()
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, m := range moved {
		f := strings.Fields(m)
		k := f[0]
		if k == "exit" { // "exit 1238 [1238] exited 4 comm=sh"
			k += " " + strings.Join(f[len(f)-3:len(f)-1], " ")
		}
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	want := []string{"exec", "exec", "exit exited 0", "exit exited 0", "exit exited 4", "fork", "fork"}
	if !slices.Equal(kinds, want) {
		t.Errorf("moved %q\nkinds %q, want %q", moved, kinds, want)
	}
}

// TestGuardErrors: bad input gets an error, and a guard is reusable after.
func TestGuardErrors(t *testing.T) {
	g := newGuard(t)
	if _, err := g.Disarm(); err == nil {
		t.Error("disarm without arm: no error")
	}
	host, err := unix.Open("/proc/self/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(host)
	if err := g.Arm(nil, []int{host}); err == nil || !strings.Contains(err.Error(), "host pid namespace") {
		t.Errorf("arm with the host pid namespace: %v", err)
	}
	net, err := unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(net)
	if err := g.Arm(nil, []int{net}); err == nil {
		t.Error("arm with a net namespace: no error")
	}
	if err := g.Arm(nil, []int{-1}); err == nil {
		t.Error("arm with fd -1: no error")
	}
	if err := g.Arm([]int{0}, nil); err == nil {
		t.Error("arm with pid 0: no error")
	}
	if err := g.Arm([]int{os.Getpid()}, nil); err != nil {
		t.Fatal(err)
	}
	if err := g.Arm([]int{os.Getpid()}, nil); err == nil {
		t.Error("arm twice: no error")
	}
	if _, err := g.Disarm(); err != nil {
		t.Error(err)
	}
}

// TestLoadWithoutCapabilities: without CAP_BPF and CAP_PERFMON, loading
// fails with a clear error wrapping EPERM, not a panic.
func TestLoadWithoutCapabilities(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=noperm")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "CAP_BPF") {
		t.Errorf("error does not name the capabilities: %s", out)
	}
}
