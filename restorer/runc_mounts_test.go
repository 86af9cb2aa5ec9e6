package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// TestE2ERuncContainerMounts (issue #18, item 5): a runc container whose
// init is nsinit, with a nested pid namespace inside (busybox unshare -p,
// which needs CAP_SYS_ADMIN in the spec), is dumped with its mount
// namespace's mounts, killed, and restored with --root on a fresh copy of
// its rootfs. Through /proc: every restored task other than the agent and
// the waiter (busybox unshare -f, waiting for its child) runs
// the copy's busybox with the copy as its root; the mount namespace has the
// recorded kernel filesystems at their recorded points inside it; its proc
// is the container's pid namespace's; a bind mount from the host is there;
// one whose source is gone refuses the restore, or is left out with
// --skip-missing-binds; nothing leaked into this machine's mounts; and
// nsinit check names, by mount point, the bind left out and one more
// unmounted inside the restored container, and nothing else.
func TestE2ERuncContainerMounts(t *testing.T) {
	needRoot(t)
	// Two bind mounts from the host: one is there at the restore, the
	// other is gone by then.
	keep, gone := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(keep, "f"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	edit := func(spec map[string]any) {
		addCaps("CAP_SYS_ADMIN")(spec)
		for _, b := range [][2]string{{keep, "/mnt/keep"}, {gone, "/mnt/gone"}} {
			spec["mounts"] = append(spec["mounts"].([]any), map[string]any{
				"destination": b[1], "type": "bind", "source": b[0], "options": []any{"rbind", "ro"}})
		}
	}
	_, init := runcContainerSpec(t, edit, "/bin/nsinit", "--", "/bin/busybox", "sh", "-c",
		"/bin/busybox unshare -p -f /bin/busybox sh -c '/bin/busybox sleep 1002 & exec /bin/busybox sleep 1003' & exec /bin/busybox sleep 1000")
	// nsinit, sleep 1000, unshare, and in the nested namespace its init
	// (sleep 1003) and sleep 1002.
	pids := waitTree(t, init, 5, func(d []int) bool { return countSleeps(d) == 3 })
	dir := dumpAndReap(t, nil, pids)
	img, err := imagefile.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	mnt := img.Namespace(img.Tasks[0].NS[pstree.MntNS])
	if mnt.Ambient || len(mnt.Mounts) == 0 {
		t.Fatalf("the container's mount namespace: ambient %v, %d mounts recorded", mnt.Ambient, len(mnt.Mounts))
	}
	var proc *pstree.Mount
	for i, m := range mnt.Mounts {
		if m.Point == "/proc" && m.FSType == "proc" {
			proc = &mnt.Mounts[i]
		}
	}
	if proc == nil || proc.PidNS != img.Tasks[0].NS[pstree.PidNS] {
		t.Fatalf("no proc mount of the container's pid namespace %d recorded: %+v", img.Tasks[0].NS[pstree.PidNS], mnt.Mounts)
	}

	newRoot := t.TempDir()
	for _, d := range []string{"proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(newRoot, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, "/bin/busybox", filepath.Join(newRoot, "bin", "busybox"))
	copyFile(t, testutil.Binary(t), filepath.Join(newRoot, "bin", "nsinit"))
	out, err := nsinit(t, "restore", "-D", dir, "-d", "--shell-job")
	if exitCode(err) != 204 || !strings.Contains(out, "recorded mounts of its mount namespace") {
		t.Fatalf("restore without --root: %v, want exit 204 naming --root and the mounts:\n%s", err, out)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	out, err = nsinit(t, "restore", "-D", dir, "-d", "--shell-job", "--root", newRoot)
	if exitCode(err) != 204 || !strings.Contains(out, gone+" does not exist") || !strings.Contains(out, "--skip-missing-binds") {
		t.Fatalf("restore with a bind source gone: %v, want exit 204 naming %s:\n%s", err, gone, out)
	}
	out, err = nsinit(t, "restore", "--dry-run", "-D", dir, "--shell-job", "--root", newRoot, "--skip-missing-binds")
	if err != nil || !strings.Contains(out, fmt.Sprintf("recorded mounts of mount ns %d on %s", mnt.ID, newRoot)) {
		t.Fatalf("the plan does not say who mounts: %v\n%s", err, out)
	}
	out, err = nsinit(t, "restore", "-D", dir, "-d", "--shell-job", "--root", newRoot, "--skip-missing-binds")
	if err != nil || !strings.Contains(out, "warning: left out") {
		t.Fatalf("restore --root: %v\n%s", err, out)
	}
	root := restoredRoot(t, out)
	killAtEnd(t, root, pids[1:])
	if root != init {
		t.Fatalf("restored the container's init at %d, want %d", root, init)
	}
	inside := checkContainerMounts(t, mnt, root, newRoot)
	// check compares the restored mounts with the image's, by mount
	// point: the bind left out is the one difference; one more unmounted
	// inside the container is named too.
	checkMountDiffs(t, dir, root, "/mnt/gone")
	if out, err := testutil.Run(t, "nsenter", "-t", strconv.Itoa(inside), "-m", "umount", filepath.Join(newRoot, "mnt/keep")); err != nil {
		t.Fatalf("umount /mnt/keep inside the restored container: %v\n%s", err, out)
	}
	checkMountDiffs(t, dir, root, "/mnt/gone", "/mnt/keep")
	// The same image into a new pid namespace, on the same DIR again
	// (whose mount points and device files the first restore made).
	t.Run("into-new-pidns", func(t *testing.T) {
		out, err := nsinit(t, "restore", "--into-new-pidns", "-D", dir, "-d", "--root", newRoot, "--skip-missing-binds")
		if err != nil {
			t.Fatalf("restore --into-new-pidns --root: %v\n%s", err, out)
		}
		f := strings.Fields(out)
		root, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("printed %q, not a pid", out)
		}
		t.Cleanup(func() { killNamespace(t, root) })
		checkContainerMounts(t, mnt, root, newRoot)
	})
}

// checkContainerMounts checks, through /proc, a runc container's tree
// restored with root as the container's init on newRoot: its three
// sleeps run newRoot's busybox in newRoot; the recorded kernel
// filesystems are at their points in their mount namespace; its proc is
// the container's pid namespace's; the bind mount from the host that was
// kept is there, the one that was gone is not; /dev/null is this
// machine's; nothing leaked into this machine's mounts.
func checkContainerMounts(t *testing.T, mnt *pstree.Namespace, root int, newRoot string) (inside int) {
	t.Helper()
	var sleeps []int
	for _, p := range testutil.Descendants(root) {
		if countSleeps([]int{p}) == 1 {
			sleeps = append(sleeps, p)
		}
	}
	if len(sleeps) != 3 {
		t.Fatalf("%d sleeps below the restored init %d, want 3", len(sleeps), root)
	}
	for _, p := range sleeps {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", p)); l != newRoot {
			t.Errorf("pid %d: root %q, want %s", p, l, newRoot)
		}
		if !sameFile(t, fmt.Sprintf("/proc/%d/exe", p), filepath.Join(newRoot, "bin", "busybox")) {
			t.Errorf("pid %d does not run the copy's busybox", p)
		}
	}
	// The restored mount namespace, as a task inside sees it.
	inside = sleeps[0]
	ms, err := procfs.New("/proc").MountInfo(inside)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, m := range ms {
		have[m.Point] = m.FSType
	}
	for _, m := range mnt.Mounts {
		if m.Point != "/" && m.Root == "/" && pstree.KernelFS[m.FSType] && have[m.Point] != m.FSType {
			t.Errorf("recorded %s on %s, restored mountinfo of %d has %q there", m.FSType, m.Point, inside, have[m.Point])
		}
	}
	// Its /proc is the container's pid namespace: its pid 1 is the
	// restored init, seen through the task's own root.
	if !sameFile(t, fmt.Sprintf("/proc/%d/root/proc/1/ns/pid", inside), fmt.Sprintf("/proc/%d/ns/pid", root)) {
		t.Errorf("/proc inside the restored container is not of its pid namespace")
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/proc/1/cmdline", inside)); !strings.Contains(string(b), "nsinit") {
		t.Errorf("pid 1 of the restored container's /proc runs %q, want nsinit", b)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/mnt/keep/f", inside)); string(b) != "kept" {
		t.Errorf("the bind mount from the host: %q, %v", b, err)
	}
	if have["/mnt/gone"] != "" {
		t.Errorf("the bind mount whose source is gone was not left out")
	}
	if !sameFile(t, fmt.Sprintf("/proc/%d/root/dev/null", inside), "/dev/null") {
		t.Errorf("/dev/null inside is not this machine's")
	}
	host, err := procfs.SelfMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range host {
		if strings.HasPrefix(m.Point, newRoot) {
			t.Errorf("mount %s %s leaked into this machine's mount namespace", m.FSType, m.Point)
		}
	}
	return inside
}

// checkMountDiffs runs nsinit check on the restored container root
// against the image in dir: it must exit 1 with one difference a line,
// each a mount missing at one of points, and no other.
func checkMountDiffs(t *testing.T, dir string, root int, points ...string) {
	t.Helper()
	out, err := nsinit(t, "check", "--shell-job", "-t", strconv.Itoa(root), "-D", dir)
	if exitCode(err) != 1 {
		t.Fatalf("check: %v, want exit 1 naming the mounts %v:\n%s", err, points, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(points) {
		t.Errorf("check found %d differences, want %d (the mounts %v):\n%s", len(lines), len(points), points, out)
	}
	for _, p := range points {
		if !strings.Contains(out, ": mount "+p+": image ") || !strings.Contains(out, ", live missing") {
			t.Errorf("check does not name the mount %s as missing:\n%s", p, out)
		}
	}
}

// addCaps adds capabilities to every set of a runc spec's process.
func addCaps(caps ...string) func(spec map[string]any) {
	return func(spec map[string]any) {
		c := spec["process"].(map[string]any)["capabilities"].(map[string]any)
		for set, v := range c {
			list, _ := v.([]any)
			for _, cp := range caps {
				list = append(list, cp)
			}
			c[set] = list
		}
	}
}

// countSleeps counts the pids that run busybox sleep.
func countSleeps(pids []int) int {
	n := 0
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if strings.HasPrefix(string(b), "/bin/busybox\x00sleep\x00") {
			n++
		}
	}
	return n
}
