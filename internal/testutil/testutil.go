// Package testutil holds what the privileged tests share: one way to skip
// when a requirement is missing, and the path of the nsinit binary under
// test.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/procfs"
	"golang.org/x/sys/unix"
)

// Requirement is something a test needs from the machine.
type Requirement struct {
	name  string
	check func() (ok bool, why string)
}

// Root needs uid 0 with CAP_SYS_ADMIN (namespaces, setns, mounts).
var Root = Requirement{"root", func() (bool, string) {
	if os.Geteuid() != 0 {
		return false, "needs root (uid 0) to create namespaces"
	}
	if !hasCap(unix.CAP_SYS_ADMIN) {
		return false, "needs CAP_SYS_ADMIN"
	}
	return true, ""
}}

// SetTID needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) for clone3 set_tid.
var SetTID = Requirement{"set_tid", func() (bool, string) {
	if !hasCap(unix.CAP_CHECKPOINT_RESTORE) && !hasCap(unix.CAP_SYS_ADMIN) {
		return false, "needs CAP_CHECKPOINT_RESTORE for clone3 set_tid"
	}
	return true, ""
}}

// BPF needs CAP_BPF and CAP_PERFMON and kernel BTF for tp_btf programs.
var BPF = Requirement{"bpf", func() (bool, string) {
	if !hasCap(unix.CAP_BPF) || !hasCap(unix.CAP_PERFMON) {
		return false, "needs CAP_BPF and CAP_PERFMON to load eBPF programs"
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return false, "needs kernel BTF (/sys/kernel/btf/vmlinux)"
	}
	return true, ""
}}

// InVM reports whether the test runs inside an nsinit test VM (vm-test/),
// where a missing requirement is a failure, never a skip.
func InVM() bool { return os.Getenv("NSINIT_IN_VM") == "1" }

// Require skips the test, naming the reason, when a requirement is missing.
// Inside a test VM it fails instead: the VM is built to have everything, so a
// skip there would hide a regression.
func Require(t testing.TB, reqs ...Requirement) {
	t.Helper()
	for _, r := range reqs {
		if ok, why := r.check(); !ok {
			if InVM() {
				t.Fatalf("requirement %s missing in test VM: %s", r.name, why)
			}
			t.Skip(why)
		}
	}
}

func hasCap(c int) bool {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// RepoRoot is the root of the source tree (where go.mod is).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Binary is the nsinit binary under test: $NSINIT_BIN, else bin/nsinit at
// the repository root (built by `make build`, which `make test` runs first).
func Binary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("NSINIT_BIN")
	if p == "" {
		p = filepath.Join(RepoRoot(), "bin", "nsinit")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("nsinit binary not found at %s: run `make build` first (or set NSINIT_BIN)", p)
	}
	return p
}

// Field returns the value of a "Key:\tvalue" line of a /proc status file
// (procfs.StatusField: blanks collapsed to one space).
func Field(status, key string) string {
	return procfs.StatusField([]byte(status), key)
}

// FullCapSet is the set of every capability the running kernel has
// (bits 0..cap_last_cap), as /proc/PID/status shows a full set.
func FullCapSet() uint64 {
	b, _ := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n > 63 {
		n = 40
	}
	return uint64(1)<<(n+1) - 1
}

// SharedTempDir is a new directory of mode perm under the system's
// temporary directory, removed when t ends: for files that processes of
// other uids must reach (t.TempDir's parent is private to the test).
func SharedTempDir(t testing.TB, prefix string, perm os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Run runs the program at path with args (RunCmd).
func Run(t testing.TB, path string, args ...string) (string, error) {
	t.Helper()
	return RunCmd(t, exec.Command(path, args...))
}

// RunCmd runs cmd with stdout and stderr to one file and returns what it
// wrote. Not a pipe: a detached restore's tree inherits the restorer's
// stdout and would hold a pipe open as long as it lives.
func RunCmd(t testing.TB, cmd *exec.Cmd) (string, error) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	out, _ := os.ReadFile(f.Name())
	return string(out), err
}

// Descendants lists root and every task below it (through the children
// files of all its threads), parents before children.
func Descendants(root int) []int {
	out := []int{root}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, th := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], th.Name()))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					out = append(out, pid)
				}
			}
		}
	}
	return out
}

// DemoTreeReady says whether make demo's workload (demo/tree.sh), started
// as the tree of root, is complete: its 12 sleepers and its 2 zombies exist.
func DemoTreeReady(root int) bool {
	sleepers, zombies := 0, 0
	for _, pid := range Descendants(root) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if procfs.StatState(st) == 'Z' {
			zombies++
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmd), "sleep\x0010") {
			sleepers++
		}
	}
	return sleepers == 12 && zombies == 2
}
