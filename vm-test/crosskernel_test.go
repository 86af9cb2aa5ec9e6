package vmtest

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/vm-test/guest"
	"golang.org/x/sys/unix"
)

// TestVMCrossKernel carries an image between two kernels (issue #18, item
// 4): make demo's tree (three pid levels, agents, zombies, sessions) dumped
// on this machine's kernel is restored in the guest (Debian's) and checked
// there; the same tree dumped in the guest is restored here, into a new
// pid namespace (the guest's level-0 pids are low, taken on any host), and
// checked from inside it.
func TestVMCrossKernel(t *testing.T) {
	needVM(t)
	needKernel(t, "CONFIG_PID_NS", "CONFIG_CGROUPS", "CONFIG_CHECKPOINT_RESTORE", "CONFIG_DEBUG_INFO_BTF")
	testutil.Require(t, testutil.Root)
	bin := buildGuestTest(t, "./vm-test/guest", "guest")
	demo := filepath.Join(testutil.RepoRoot(), "demo", "tree.sh")
	busybox, err := filepath.EvalSymlinks("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static (scripts/install-deps.sh installs it): %v", err)
	}
	t.Run("host-to-guest", func(t *testing.T) {
		img := dumpDemoTree(t)
		files := []File{{Path: "/tests/guest.test", Src: bin}, {Path: "/xk/img", Mode: 0o755 | os.ModeDir}}
		ents, err := os.ReadDir(img)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			files = append(files, File{Path: "/xk/img/" + e.Name(), Src: filepath.Join(img, e.Name())})
		}
		// The host's tasks ran busybox through /bin, a link to /usr/bin.
		if busybox != "/bin/busybox" {
			files = append(files, File{Path: busybox, Src: busybox})
		}
		bootGuestTest(t, files, "NSINIT_XK_IMAGE=/xk/img", "^TestCrossKernelRestore$")
	})
	t.Run("guest-to-host", func(t *testing.T) {
		files := []File{{Path: "/tests/guest.test", Src: bin}, {Path: "/src/demo/tree.sh", Src: demo}}
		st, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		res := bootGuestTest(t, files, "NSINIT_XK_EMIT=1 NSINIT_XK_CAPBND="+testutil.Field(string(st), "CapBnd"), "^TestCrossKernelDump$")
		img := t.TempDir()
		if n := readConsoleFiles(t, res.Console, img); n == 0 {
			t.Fatalf("no image file on the guest console:\n%s", tail(res.Console, 4096))
		}
		out, err := testutil.Run(t, testutil.Binary(t), "restore", "--into-new-pidns", "-D", img, "-d")
		if err != nil {
			t.Fatalf("restore --into-new-pidns of the guest's image: %v\n%s", err, out)
		}
		f := strings.Fields(out)
		root, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("restore printed %q, not a pid", out)
		}
		init := ppidOf(t, root) // the new namespace's PID 1, nsinit
		t.Cleanup(func() { unix.Kill(init, unix.SIGKILL) })
		tr, err := imagefile.Read(img)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Kernel == "" || tr.Kernel == hostKernel(t) {
			t.Errorf("the guest's image says it was dumped on kernel %q, want the guest's", tr.Kernel)
		}
		// check runs inside the namespace, where the image's pids are.
		out, err = testutil.Run(t, "nsenter", "-t", strconv.Itoa(init), "-m", "-p", "--",
			testutil.Binary(t), "check", "-t", strconv.Itoa(tr.Tasks[0].PID()), "-D", img, "--shell-job")
		if err != nil {
			t.Fatalf("check of the guest's tree restored here: %v\n%s", err, out)
		}
	})
}

// dumpDemoTree starts make demo's tree here (cwd /, which the guest has
// too), dumps it with --kill and returns the image directory.
func dumpDemoTree(t *testing.T) string {
	t.Helper()
	nsinit := testutil.Binary(t)
	root := exec.Command(nsinit, "--", "/bin/busybox", "sh", filepath.Join(testutil.RepoRoot(), "demo", "tree.sh"))
	root.Env = append(os.Environ(), "NSINIT="+nsinit)
	root.Dir = "/"
	root.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	pids := []int{root.Process.Pid}
	t.Cleanup(func() {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		root.Wait()
	})
	for i := 0; !testutil.DemoTreeReady(root.Process.Pid); i++ {
		if i == 6000 {
			t.Fatal("demo tree not complete after 60 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pids = testutil.Descendants(root.Process.Pid)
	img := t.TempDir()
	if out, err := testutil.Run(t, nsinit, "dump", "-t", strconv.Itoa(root.Process.Pid), "-D", img, "--kill"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	return img
}

// bootGuestTest boots the guest test binary /tests/guest.test with files,
// running the tests matching run with env (KEY=VALUE words) set, and fails unless one passed.
func bootGuestTest(t *testing.T, files []File, env, run string) Result {
	t.Helper()
	res, err := boot(t, Config{
		Init:     testutil.Binary(t),
		Files:    files,
		Env:      append([]string{"NSINIT_IN_VM=1", "NSINIT_BIN=/bin/nsinit"}, strings.Fields(env)...),
		Cmd:      []string{"/tests/guest.test", "-test.v", "-test.count=1", "-test.timeout=" + guestTestTimeout.String(), "-test.run", run},
		Timeout:  guestTestTimeout + time.Minute,
		MemoryMB: 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	passed := false
	for _, r := range parseTestOutput(res.Console) {
		switch r.verdict {
		case "PASS":
			passed = true
		case "FAIL", "SKIP":
			t.Fatalf("%s %s in the guest:\n%s", r.name, r.verdict, r.output)
		}
	}
	if !passed || res.Status != 0 {
		t.Fatalf("guest status %d, no test passed:\n%s", res.Status, tail(res.Console, 4096))
	}
	return res
}

// readConsoleFiles writes the files the guest put on its console
// (guest.XKFileMarker blocks) into dir, checking each one's SHA-256, and
// returns how many there were.
func readConsoleFiles(t *testing.T, console, dir string) int {
	t.Helper()
	n := 0
	s := bufio.NewScanner(strings.NewReader(console))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		f := strings.Fields(strings.TrimRight(s.Text(), "\r"))
		if len(f) != 3 || f[0] != guest.XKFileMarker || strings.ContainsAny(f[1], "/\\") || strings.HasPrefix(f[1], ".") {
			continue
		}
		var enc strings.Builder
		for s.Scan() {
			l := strings.TrimSpace(s.Text())
			if l == guest.XKEndMarker {
				break
			}
			enc.WriteString(l)
		}
		b, err := base64.StdEncoding.DecodeString(enc.String())
		if err != nil {
			t.Fatalf("%s from the console: %v", f[1], err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != f[2] {
			t.Fatalf("%s from the console: sha256 %s, the guest wrote %s", f[1], got, f[2])
		}
		if err := os.WriteFile(filepath.Join(dir, f[1]), b, 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

// ppidOf reads pid's parent from /proc.
func ppidOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	ppid, err := strconv.Atoi(testutil.Field(string(b), "PPid"))
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

// hostKernel is this machine's kernel release.
func hostKernel(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
