package guest

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// The guest's half of vm-test's TestVMCrossKernel: an image dumped on one
// kernel restored on the other (issue #18, item 4). Each runs only when the
// host asks for it through the environment.

// TestCrossKernelRestore restores the host's image in $NSINIT_XK_IMAGE on
// this kernel and checks it. The tree was started from the host test's
// session: it takes this restorer's (--shell-job).
func TestCrossKernelRestore(t *testing.T) {
	img := os.Getenv("NSINIT_XK_IMAGE")
	if img == "" {
		t.Skip("run by vm-test's TestVMCrossKernel")
	}
	inMachine(t)
	t.Log(nsinit(t, "show", img))
	pidfile := filepath.Join(t.TempDir(), "root.pid")
	nsinit(t, "restore", "-D", img, "-d", "--shell-job", "--pidfile", pidfile)
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	t.Cleanup(func() {
		for _, p := range testutil.Descendants(root) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	})
	t.Log(nsinit(t, "check", "-t", strconv.Itoa(root), "-D", img, "--shell-job"))
}

// TestCrossKernelDump makes demo's tree on this kernel, dumps it and writes
// the image on the console for the host to restore ($NSINIT_XK_EMIT).
func TestCrossKernelDump(t *testing.T) {
	if os.Getenv("NSINIT_XK_EMIT") == "" {
		t.Skip("run by vm-test's TestVMCrossKernel")
	}
	inMachine(t)
	img := t.TempDir()
	root := exec.Command("/bin/nsinit", "--", "/bin/busybox", "sh", demoTree)
	root.Env = append(os.Environ(), "NSINIT=/bin/nsinit")
	root.Dir = "/" // recorded as the tasks' cwd: one the host has too
	// The tree gets no capability the host's restorer lacks (the host
	// refuses to restore a task with more): the bounding set is the
	// thread's, so the tree is started from the thread that dropped them.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if v := os.Getenv("NSINIT_XK_CAPBND"); v != "" {
		keep, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			t.Fatalf("NSINIT_XK_CAPBND=%q: %v", v, err)
		}
		for c := 0; c < 64; c++ {
			if keep&(1<<c) == 0 {
				unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0) // EINVAL past cap_last_cap
			}
		}
	}
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { root.Process.Kill(); root.Wait() }()
	waitUntil(t, "the whole demo tree", func() bool { return testutil.DemoTreeReady(root.Process.Pid) })
	nsinit(t, "dump", "-t", strconv.Itoa(root.Process.Pid), "-D", img, "--kill")
	files, err := os.ReadDir(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(img, f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		enc := base64.StdEncoding.EncodeToString(b)
		var out strings.Builder
		fmt.Fprintf(&out, "\n%s %s %x\n", XKFileMarker, f.Name(), sha256.Sum256(b))
		for len(enc) > 0 {
			n := min(len(enc), 76)
			out.WriteString(enc[:n] + "\n")
			enc = enc[n:]
		}
		out.WriteString(XKEndMarker + "\n")
		os.Stdout.WriteString(out.String())
	}
}
