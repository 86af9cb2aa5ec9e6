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

// liveTasks lists the tasks of a pid namespace that are not zombies, from
// /proc (what a dump reads).
func liveTasks(t *testing.T, ns uint32) map[int]bool {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	live := map[int]bool{}
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
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] != 'Z' {
			live[pid] = true
		}
	}
	return live
}

// TestGuardDetectsEveryRace arms the guard on a namespace whose tree forks
// and exits all the time, reads the tree from /proc until /proc itself shows
// that a task seen alive since Arm has exited (the exit tracepoint fires
// before a task turns zombie or vanishes), and disarms: the guard must
// report a move every time. On a quiet tree it must report nothing every
// time. The verdict follows what /proc shows, not timing.
func TestGuardDetectsEveryRace(t *testing.T) {
	g := newGuard(t)
	busy := startShell(t)
	busy.run("while :; do /bin/busybox true; done &")
	quiet := startShell(t)
	quiet.run("/bin/busybox sleep 1000 &")

	for i := range 20 {
		if err := g.Arm(nil, []int{busy.nsFD}); err != nil {
			t.Fatal(err)
		}
		seen := map[int]bool{}
	read:
		for {
			live := liveTasks(t, busy.inode)
			for pid := range seen {
				if !live[pid] {
					break read
				}
			}
			for pid := range live {
				seen[pid] = true
			}
		}
		moved, err := g.Disarm()
		if err != nil {
			t.Fatal(err)
		}
		if len(moved) == 0 {
			t.Fatalf("round %d: the tree moved (per /proc) but the guard saw nothing", i)
		}
		if i == 0 {
			t.Logf("moved: %q", moved[:min(4, len(moved))])
		}

		if err := g.Arm(nil, []int{quiet.nsFD}); err != nil {
			t.Fatal(err)
		}
		liveTasks(t, quiet.inode)
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
	// Let the shell start (its own exec happens before it reads stdin).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sh.Process.Pid)); strings.TrimSpace(string(b)) == "busybox" {
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
		if k == "exit" {
			k += " " + f[len(f)-2]
		}
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	want := []string{"exec", "exec", "exit 0x0", "exit 0x0", "exit 0x400", "fork", "fork"}
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
