package guest

import (
	"bufio"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// inMachine skips unless this test runs under nsinit as the VM's init.
func inMachine(t *testing.T) {
	t.Helper()
	if !testutil.InVM() {
		t.Skip("runs only inside an nsinit test VM (NSINIT_IN_VM=1, see vm-test)")
	}
	if os.Getppid() != 1 {
		t.Fatalf("parent is pid %d, want nsinit as pid 1", os.Getppid())
	}
}

// TestPID1IsNsinit: the machine's pid 1 is nsinit (/init) and pid 2 is
// kthreadd, i.e. we are in the initial pid namespace of a real kernel.
func TestPID1IsNsinit(t *testing.T) {
	inMachine(t)
	exe, err := os.Readlink("/proc/1/exe")
	if err != nil || exe != "/init" {
		t.Errorf("/proc/1/exe = %q, %v, want /init", exe, err)
	}
	comm, _ := os.ReadFile("/proc/2/comm")
	if string(comm) != "kthreadd\n" {
		t.Errorf("/proc/2/comm = %q, want kthreadd", comm)
	}
	var u syscall.Utsname
	syscall.Uname(&u)
	t.Logf("guest kernel %s", cstr(u.Release[:]))
}

func cstr(b []int8) string {
	s := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

// TestMounts: the machine init mounted what the project's tests need.
func TestMounts(t *testing.T) {
	inMachine(t)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ... mountpoint(5th) ... " - " fstype
		fields := strings.Fields(s.Text())
		_, after, _ := strings.Cut(s.Text(), " - ")
		if len(fields) > 4 && after != "" {
			got[fields[4]] = strings.Fields(after)[0]
		}
	}
	for dir, fstype := range map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/tmp": "tmpfs",
		"/sys/fs/cgroup": "cgroup2", "/sys/kernel/tracing": "tracefs", "/sys/fs/bpf": "bpf",
	} {
		if got[dir] != fstype {
			t.Errorf("%s: mounted %q, want %s", dir, got[dir], fstype)
		}
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Errorf("kernel BTF: %v", err)
	}
}

// TestOrphanReaped: a process orphaned in the machine is reparented to
// nsinit (pid 1) and reaped by it, so it never lingers as a zombie.
func TestOrphanReaped(t *testing.T) {
	inMachine(t)
	// sh starts a background sleep, prints its pid and exits: the sleep's
	// parent dies, so the kernel hands it to pid 1.
	out, err := exec.Command("/bin/busybox", "sh", "-c", "/bin/busybox sleep 1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", out, err)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err == nil {
		if pp := testutil.Field(string(status), "PPid"); pp != "1" {
			t.Errorf("orphan %d has PPid %s, want 1", pid, pp)
		}
	}
	// Bounded wait for a condition, not a timing assertion: the sleep
	// exits after 1 s; pid 1 must then reap it.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return // gone: reaped
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d never reaped by pid 1: State %s", pid, testutil.Field(string(status), "State"))
		}
	}
}

// TestSignalForwarded: a signal sent to the machine's pid 1 reaches the
// command (this test binary). The kernel drops signals to init that it
// has no handler for, so this proves nsinit catches and forwards them.
func TestSignalForwarded(t *testing.T) {
	inMachine(t)
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	defer signal.Stop(c)
	if err := syscall.Kill(1, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c:
	case <-time.After(60 * time.Second):
		t.Fatal("SIGUSR1 sent to pid 1 never reached the command")
	}
}
