package guest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// demoTree is make demo's workload, put in the guest by vm-test.
const demoTree = "/src/demo/tree.sh"

// TestDemoTreeRestored is `make demo` on the guest's kernel, with nsinit as
// the machine's init: a tree over three pid namespaces with nsinit agents
// as PID 1 of the inner ones, zombies and sessions is dumped (eBPF-checked),
// killed, restored with the same pids at every level, and nsinit check
// finds no difference.
func TestDemoTreeRestored(t *testing.T) {
	inMachine(t)
	if _, err := os.Stat(demoTree); err != nil {
		t.Fatalf("%s missing from the guest: %v", demoTree, err)
	}
	img := t.TempDir()
	root := exec.Command("/bin/nsinit", "--", "/bin/busybox", "sh", demoTree)
	root.Env = append(os.Environ(), "NSINIT=/bin/nsinit")
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { root.Process.Kill(); root.Wait() }()
	waitUntil(t, "the whole demo tree", func() bool { return testutil.DemoTreeReady(root.Process.Pid) })
	original := findCmd("sleep 10")
	nsinit(t, "dump", "-t", strconv.Itoa(root.Process.Pid), "-D", img, "--kill")
	root.Wait()
	// The killed tasks' pids stay taken until the machine's init reaps them.
	waitUntil(t, "the dumped tree to be gone", func() bool {
		for _, p := range original {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); err == nil {
				return false
			}
		}
		return true
	})
	pidfile := filepath.Join(img, "restored.pid")
	nsinit(t, "restore", "-D", img, "-d", "--pidfile", pidfile)
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	restored, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	defer func() {
		for _, p := range findCmd("sleep 10") {
			syscall.Kill(p, syscall.SIGKILL)
		}
		syscall.Kill(restored, syscall.SIGKILL)
	}()
	if restored != root.Process.Pid {
		t.Errorf("restored root is pid %d, want %d", restored, root.Process.Pid)
	}
	t.Log(nsinit(t, "check", "-t", strconv.Itoa(restored), "-D", img))
}

// nsinit runs /bin/nsinit with args (testutil.Run: output to a file) and
// fails the test on a non-zero exit.
func nsinit(t *testing.T, args ...string) string {
	t.Helper()
	out, err := testutil.Run(t, "/bin/nsinit", args...)
	if err != nil {
		t.Fatalf("nsinit %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// findCmd lists the pids whose command line contains s.
func findCmd(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
