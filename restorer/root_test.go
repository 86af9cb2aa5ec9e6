package restorer

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestE2ERootElsewhere: a tree whose inner pid namespace runs in another
// root directory (a chroot, as a container's filesystem) is recorded as
// such; a plain restore refuses it by name instead of running this
// machine's programs; --root DIR runs it in DIR (its root and its
// executable are DIR's), --mounts host in this machine's root (issue #18,
// item 5: the first step).
func TestE2ERootElsewhere(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	for _, tool := range []string{"unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, coreutils)", tool)
		}
	}
	rootfs := t.TempDir()
	copyFile(t, "/bin/busybox", filepath.Join(rootfs, "bin", "busybox"))
	// sh gives a background job /dev/null as stdin.
	if err := os.Mkdir(filepath.Join(rootfs, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(rootfs, "dev", "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	// The tree: unshare (this root) waiting for PID 1 of a new pid
	// namespace, a shell in rootfs that starts a sleep and becomes one.
	tree := exec.Command("unshare", "-p", "-f", "chroot", rootfs, "/bin/busybox", "sh", "-c",
		"/bin/busybox sleep 100000 & exec /bin/busybox sleep 100001")
	dir := dumpAndReap(t, tree, startCmdTree(t, tree, 3, func(d []int) bool { return sleeping(d[1:]) }))
	img, err := imagefile.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	var inside []int
	for _, tk := range img.Tasks {
		if tk.RootElsewhere != (tk.Level() > 0) {
			t.Errorf("task %v: root_elsewhere %v (root %q)", tk.PIDs, tk.RootElsewhere, tk.Root)
		}
		if tk.Level() > 0 {
			inside = append(inside, tk.PID())
		}
	}

	out, err := nsinit(t, "restore", "-D", dir, "-d")
	if exitCode(err) != 204 || !strings.Contains(out, "another root directory") || !strings.Contains(out, "--root DIR") {
		t.Fatalf("plain restore: %v, want exit 204 naming the other root:\n%s", err, out)
	}
	for _, mode := range [][]string{{"--root", rootfs}, {"--mounts", "host"}} {
		t.Run(mode[0], func(t *testing.T) {
			out, err := nsinit(t, append([]string{"restore", "-D", dir, "-d"}, mode...)...)
			if err != nil {
				t.Fatalf("restore %v: %v\n%s", mode, err, out)
			}
			root := restoredRoot(t, out)
			killAtEnd(t, root, inside)
			wantRoot := "/"
			if mode[0] == "--root" {
				wantRoot = rootfs
			}
			for _, pid := range inside {
				if !sameFile(t, fmt.Sprintf("/proc/%d/root", pid), wantRoot) {
					t.Errorf("pid %d: root is not %s", pid, wantRoot)
				}
				if !sameFile(t, fmt.Sprintf("/proc/%d/exe", pid), filepath.Join(rootfs, "bin", "busybox")) {
					t.Errorf("pid %d: exe is not %s/bin/busybox", pid, rootfs)
				}
			}
			if out, err := nsinit(t, "check", "-t", strconv.Itoa(root), "-D", dir); err != nil {
				t.Errorf("check: %v\n%s", err, out)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
}

// sameFile says whether a and b (links followed) are the same file.
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// sleeping says whether every pid runs busybox sleep (its exec is done).
func sleeping(pids []int) bool {
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if !strings.Contains(string(b), "sleep") || strings.Contains(string(b), "-c") {
			return false
		}
	}
	return true
}

// reapGone waits until pid no longer exists, reaping it if it is (or
// becomes, once its parent dies) this process's child: the test process is
// a subreaper.
func reapGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; ; i++ {
		unix.Wait4(pid, nil, unix.WNOHANG|unix.WALL, nil)
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return
		}
		if i == 60000 {
			t.Fatalf("pid %d still exists", pid)
		}
		time.Sleep(time.Millisecond)
	}
}
