package restorer

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// windowCanary is a word of the restorer's memory - which every builder
// shares until its exec - that an attacker must never be able to read.
var windowCanary uint64 = 0x6e73696e69742121

// attackerRole makes the test binary the attacker of TestNoPtraceWindow.
const attackerRole = "NSINIT_TEST_ATTACKER"

// TestNoPtraceWindow restores 100 tasks of uid 1000 (exec payload) while
// a process of uid 1000 tries, as fast as it can, to read the restorer's
// memory through each of their pids (process_vm_readv: the kernel's ptrace
// access check). A builder that runs with uid 1000 while it still shares
// the root restorer's memory, and that memory is dumpable, would let it:
// uid 1000 could then write there too and run code as root. It must read
// the canary through none of them.
func TestNoPtraceWindow(t *testing.T) {
	needRoot(t)
	const n = 100
	base := freeBase(t, 20000, n+1)
	b := newTB()
	full := testutil.FullCapSet()
	root := b.task(1, []int{base}, 0, []int{base}, []int{base})
	root.Creds = pstree.Creds{CapPrm: full, CapEff: full, CapBnd: full}
	var pids []string
	for i := 1; i <= n; i++ {
		tk := b.task(1, []int{base + i}, base, []int{base}, []int{base})
		tk.Creds = pstree.Creds{UID: 1000, EUID: 1000, SUID: 1000, FSUID: 1000,
			GID: 1000, EGID: 1000, SGID: 1000, FSGID: 1000, CapBnd: full}
		pids = append(pids, strconv.Itoa(base+i))
	}
	tr := sleepers(&b.tr)

	self := copyForUser(t)
	attacker := exec.Command(self, fmt.Sprint(uintptr(unsafe.Pointer(&windowCanary))), strings.Join(pids, ","))
	attacker.Env = append(os.Environ(), attackerRole+"=1")
	attacker.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	out, err := attacker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := attacker.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("the attacker did not start: %q", lines.Text())
	}
	_, res, err := restore(t, tr, PayloadExec)
	attacker.Process.Kill()
	var reads []string
	for lines.Scan() {
		reads = append(reads, lines.Text())
	}
	attacker.Wait()
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	_ = res
	if len(reads) > 0 {
		t.Errorf("uid 1000 read the root restorer's memory through a builder: %v", reads)
	}
	checkTree(t, tr, PayloadExec)
}

// attackWindow is the attacker: it reads the word at the address in
// os.Args[1] through every pid of os.Args[2] (comma-separated), round after
// round until it is killed, and prints each pid through which it read
// windowCanary.
func attackWindow() int {
	addr, _ := strconv.ParseUint(os.Args[1], 10, 64)
	var pids []int
	for _, f := range strings.Split(os.Args[2], ",") {
		p, _ := strconv.Atoi(f)
		pids = append(pids, p)
	}
	fmt.Println("ready")
	buf := make([]byte, 8)
	local := []unix.Iovec{{Base: &buf[0], Len: 8}}
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: 8}}
	for {
		for _, p := range pids {
			if n, err := unix.ProcessVMReadv(p, local, remote, 0); err == nil && n == 8 &&
				binary.NativeEndian.Uint64(buf) == windowCanary {
				fmt.Println("read through pid", p)
			}
		}
	}
}

// copyForUser copies the test binary where another uid can run it (go
// test's build directory is private).
func copyForUser(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.SharedTempDir(t, "nsinit-attacker", 0o755)
	bin := dir + "/restorer.test"
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}
