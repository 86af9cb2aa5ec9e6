package restorer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
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
	tr, pids := uid1000Tree(t, n)
	if err := attackRestore(t, tr, 1000, pids, PayloadExec); err != nil {
		t.Fatalf("restore: %v", err)
	}
}

// TestNoPtraceWindowStopped restores 20 tasks of uid 1000 and one of root
// with the stopped payload: they wait, stopped, in the restorer's memory
// for as long as they live, each with its image's ids. uid 1000 must not
// reach that memory through them, during the restore or after it (a root
// task waits there too).
func TestNoPtraceWindowStopped(t *testing.T) {
	needRoot(t)
	const n = 20
	tr, pids := uid1000Tree(t, n)
	defer unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
	if err := attackRestore(t, tr, 1000, pids, PayloadStopped); err != nil {
		t.Fatalf("restore: %v", err)
	}
}

// uid1000Tree is a root task with every capability and n children of uid
// 1000 (sleepers) at a free window of host pids, and those children's pids.
func uid1000Tree(t *testing.T, n int) (*pstree.Tree, []string) {
	t.Helper()
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
	return sleepers(&b.tr), pids
}

// TestNoPtraceWindowUserNS restores a rootless shape: userTree (a user
// namespace mapped to host uids 100000 and up, a second one inside), its
// outer user namespace owned by uid 1000 as rootless containers' are, with
// 100 more tasks in the inner one, while a process of uid 1000 tries to read
// the restorer's memory through every pid. uid 1000 holds every capability
// in the user namespaces it owns: it passes the kernel's ptrace check on
// any builder inside them (docs/kernel.md F8.4) while their memory - the
// root restorer's - is dumpable. It must stay non-dumpable all that time
// (exec_private.go, keepPrivate).
func TestNoPtraceWindowUserNS(t *testing.T) {
	needRoot(t)
	for try := 0; ; try++ {
		tr := userTree()
		tr.Namespace(61).OwnerUID = 1000
		var inner *pstree.Task
		for i := range tr.Tasks {
			if tr.Tasks[i].PIDs[0] == 22306 {
				inner = &tr.Tasks[i]
			}
		}
		if inner == nil {
			t.Fatal("userTree has no task 22306")
		}
		for i := 0; i < 100; i++ {
			tk := *inner
			tk.PIDs = []int{22310 + i, 10 + i, 3 + i}
			tk.PPID = 22306
			tk.SIDs, tk.PGIDs = slices.Clone(inner.SIDs), slices.Clone(inner.PGIDs)
			tr.Tasks = append(tr.Tasks, tk)
		}
		tr = place(t, sleepers(tr))
		var pids []string
		for _, tk := range tr.Tasks {
			pids = append(pids, strconv.Itoa(tk.PIDs[0]))
		}
		err := attackRestore(t, tr, 1000, pids, PayloadExec)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrPIDTaken) {
			t.Fatalf("restore: %v", err)
		}
		if try == 4 {
			t.Skipf("host too busy: image pids taken by other processes in 5 windows: %v", err)
		}
		assertGone(t, tr)
	}
}

// attackRestore restores tr while a process of uid tries to read
// windowCanary through each of pids; with the stopped payload, once more
// after the restore.
func attackRestore(t *testing.T, tr *pstree.Tree, uid uint32, pids []string, pay Payload) error {
	t.Helper()
	self := copyForUser(t)
	attacker := func() *exec.Cmd {
		c := exec.Command(self, fmt.Sprint(uintptr(unsafe.Pointer(&windowCanary))), strings.Join(pids, ","))
		c.Env = append(os.Environ(), attackerRole+"=1")
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		return c
	}
	during := attacker()
	out, err := during.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := during.Start(); err != nil {
		t.Fatal(err)
	}
	// However the test ends (a Fatal in restore, say), the attacker goes.
	t.Cleanup(func() {
		during.Process.Kill()
		during.Wait()
	})
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("the attacker did not start: %q", lines.Text())
	}
	_, _, err = restore(t, tr, pay)
	during.Process.Kill()
	var reads []string
	for lines.Scan() {
		reads = append(reads, lines.Text())
	}
	if errors.Is(err, ErrPIDTaken) {
		return err
	}
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if pay == PayloadStopped {
		after := attacker()
		after.Env = append(after.Env, attackOnce+"=1")
		b, err := after.Output()
		if err != nil {
			t.Fatalf("attacker after the restore: %v", err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if l != "ready" && l != "" {
				reads = append(reads, l+" (after the restore)")
			}
		}
	}
	if len(reads) > 0 {
		t.Errorf("uid %d read the root restorer's memory through a builder: %v", uid, reads)
	}
	checkTree(t, tr, pay)
	return nil
}

// attackOnce makes the attacker read through every pid once and exit.
const attackOnce = "NSINIT_TEST_ATTACK_ONCE"

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
	for once := os.Getenv(attackOnce) != ""; ; {
		for _, p := range pids {
			if n, err := unix.ProcessVMReadv(p, local, remote, 0); err == nil && n == 8 &&
				binary.NativeEndian.Uint64(buf) == windowCanary {
				fmt.Println("read through pid", p)
			}
		}
		if once {
			return 0
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

// TestRestoreUserNamespacesPrivate restores userTree (user namespaces two
// deep, builders inside them joining their fellows' pid namespaces) with
// the shared memory kept non-dumpable throughout, as a restore does when a
// builder could otherwise be a way into it (exec_private.go, keepPrivate): the
// builders in child user namespaces then have no ptrace right over their
// fellows and join their namespaces through files the restorer opens
// (builder_linux.go, setnsVia).
func TestRestoreUserNamespacesPrivate(t *testing.T) {
	forcePrivate = true
	defer func() {
		forcePrivate = false
		_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
	}()
	scenario(t, userTree)
	scenario(t, userLauncherTree)
}
