package restorer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
)

// runcBundle is a runc container's bundle for argv (Debian's runc, its
// default spec: default capabilities, no rlimits raised, a static busybox
// and this nsinit in a private rootfs), a runc command with its own state
// directory (output through a file: a container's init inherits runc's
// stdout) and the container's id, deleted when the test ends.
func runcBundle(t *testing.T, argv ...string) (bundle, id string, runc func(args ...string) *exec.Cmd) {
	t.Helper()
	return runcBundleSpec(t, nil, argv...)
}

// runcBundleSpec is runcBundle with edit applied to the spec (nil: none).
func runcBundleSpec(t *testing.T, edit func(spec map[string]any), argv ...string) (bundle, id string, runc func(args ...string) *exec.Cmd) {
	t.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc (scripts/install-deps.sh installs it)")
	}
	bundle = t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, "/bin/busybox", filepath.Join(rootfs, "bin", "busybox"))
	copyFile(t, testutil.Binary(t), filepath.Join(rootfs, "bin", "nsinit"))
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v\n%s", err, out)
	}
	var spec map[string]any
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"], proc["args"] = false, argv
	delete(proc, "rlimits") // raising RLIMIT_NOFILE needs CAP_SYS_RESOURCE, which CI lacks
	spec["root"].(map[string]any)["readonly"] = false
	if edit != nil {
		edit(spec)
	}
	if b, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	id = fmt.Sprintf("nsinit-test-%d-%d", os.Getpid(), runcSeq.Add(1)) // runc names the cgroup after it
	runc = func(args ...string) *exec.Cmd {
		return exec.Command("runc", append([]string{"--root", state}, args...)...)
	}
	t.Cleanup(func() { testutil.RunCmd(t, runc("delete", "-f", id)) })
	return bundle, id, runc
}

// runcSeq tells apart the containers of one test process.
var runcSeq atomic.Int64

// runcContainer runs argv as the init of a detached runc container and
// returns its rootfs and the init's host pid (this process's child: runc
// leaves it to the nearest subreaper).
func runcContainer(t *testing.T, argv ...string) (rootfs string, pid int) {
	t.Helper()
	return runcContainerSpec(t, nil, argv...)
}

// runcContainerSpec is runcContainer with edit applied to the spec.
func runcContainerSpec(t *testing.T, edit func(spec map[string]any), argv ...string) (rootfs string, pid int) {
	t.Helper()
	bundle, id, runc := runcBundleSpec(t, edit, argv...)
	return filepath.Join(bundle, "rootfs"), runcRun(t, bundle, id, runc)
}

// runcRun runs the container of runcBundleSpec detached and returns its
// init's host pid.
func runcRun(t *testing.T, bundle, id string, runc func(args ...string) *exec.Cmd) int {
	t.Helper()
	if out, err := testutil.RunCmd(t, runc("run", "-d", "--bundle", bundle, id)); err != nil {
		t.Fatalf("runc run: %v\n%s", err, out)
	}
	out, err := testutil.RunCmd(t, runc("state", id))
	if err != nil {
		t.Fatalf("runc state: %v\n%s", err, out)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Pid <= 0 {
		t.Fatalf("runc state %q: %v", out, err)
	}
	return st.Pid
}

// TestRuncInit: nsinit as a runc container's init (a foreground `runc
// run`, as `docker run --init` would use it): it reaps an orphan the
// command leaves, forwards runc's SIGTERM to the command, and the
// container exits with the command's status.
func TestRuncInit(t *testing.T) {
	needRoot(t)
	// The orphan: a sleep whose parent shell exits at once; the trap
	// turns the forwarded SIGTERM into exit status 7.
	bundle, id, runc := runcBundle(t, "/bin/nsinit", "--", "/bin/busybox", "sh", "-c",
		`/bin/busybox sh -c '/bin/busybox sleep 0 & exit 0'; trap "exit 7" TERM; /bin/busybox sleep 1000 & wait`)
	out, err := os.CreateTemp(t.TempDir(), "runc")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	run := runc("run", "--bundle", bundle, id)
	run.Stdout, run.Stderr = out, out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	// Up: the container's init runs the command, whose sleep runs, and
	// the orphan is gone (reaped by nsinit, not left a zombie).
	var init int
	for i := 0; ; i++ {
		if st, err := testutil.RunCmd(t, runc("state", id)); err == nil {
			var s struct{ Pid int }
			if json.Unmarshal([]byte(st), &s) == nil && s.Pid > 0 {
				init = s.Pid
			}
		}
		if d := testutil.Descendants(init); init > 0 && len(d) == 3 && zombiesAmong(d) == 0 && sleeping(d[2:]) {
			break
		}
		if i == 30000 {
			t.Fatalf("the container never settled: %v", testutil.Descendants(init))
		}
		time.Sleep(time.Millisecond)
	}
	if o, err := testutil.RunCmd(t, runc("kill", id, "TERM")); err != nil {
		t.Fatalf("runc kill: %v\n%s", err, o)
	}
	err = run.Wait()
	if code := exitCode(err); code != 7 {
		b, _ := os.ReadFile(out.Name())
		t.Errorf("runc run exited %d (%v), want the command's 7\n%s", code, err, b)
	}
}

// zombiesAmong counts the zombies among pids.
func zombiesAmong(pids []int) int {
	n := 0
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if procfs.StatState(b) == 'Z' {
			n++
		}
	}
	return n
}

// TestE2ERuncContainer: a runc container whose init is nsinit (as `podman
// run --init-path` or a Dockerfile's ENTRYPOINT would make it), dumped from
// the host, is refused by a plain restore (its programs are the
// container's, not this machine's), and restored with --root into the
// container's filesystem: the same pids, the container's busybox, its root
// directory, and nsinit check finds no difference. The agent comes back
// with the container's capabilities, so the restorer writes its cursor.
func TestE2ERuncContainer(t *testing.T) {
	needRoot(t)
	rootfs, init := runcContainer(t, "/bin/nsinit", "--", "/bin/busybox", "sh", "-c",
		"/bin/busybox sleep 1001 & exec /bin/busybox sleep 1000")
	pids := waitTree(t, init, 3, func(d []int) bool { return sleeping(d[1:]) })
	dir := dumpAndReap(t, nil, pids) // runc's init: this process's child, not a Cmd of the test's
	out, err := nsinit(t, "restore", "-D", dir, "-d", "--shell-job")
	if exitCode(err) != 204 || !strings.Contains(out, "another root directory") {
		t.Fatalf("plain restore: %v, want exit 204 naming the container's root:\n%s", err, out)
	}
	out, err = nsinit(t, "restore", "-D", dir, "-d", "--shell-job", "--root", rootfs)
	if err != nil {
		t.Fatalf("restore --root: %v\n%s", err, out)
	}
	root := restoredRoot(t, out)
	killAtEnd(t, root, pids[1:])
	if root != init {
		t.Errorf("restored the container's init at %d, want %d", root, init)
	}
	for _, p := range pids[1:] {
		if !sameFile(t, fmt.Sprintf("/proc/%d/root", p), rootfs) || !sameFile(t, fmt.Sprintf("/proc/%d/exe", p), filepath.Join(rootfs, "bin", "busybox")) {
			t.Errorf("pid %d does not run the container's busybox in its root", p)
		}
	}
	if out, err := nsinit(t, "check", "--shell-job", "-t", strconv.Itoa(root), "-D", dir); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
}
