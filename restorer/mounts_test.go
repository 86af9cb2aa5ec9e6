package restorer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// TestMountActs: what a mounter does on the new root, decided from the
// recorded mounts alone (the kernel part is TestE2ERuncContainerMounts).
func TestMountActs(t *testing.T) {
	ns := &pstree.Namespace{ID: 7, Kind: pstree.MntNS, Mounts: []pstree.Mount{
		{Point: "/", Root: "/srv/c", FSType: "ext4", Source: "/dev/sda1", HostPath: "/srv/c"},
		{Point: "/proc", Root: "/", FSType: "proc", Source: "proc", Options: "rw,nosuid,relatime", SuperOptions: "rw"},
		{Point: "/proc/sys", Root: "/sys", FSType: "proc", Source: "proc", Options: "ro,relatime", SuperOptions: "rw", BindOf: 2},
		{Point: "/dev", Root: "/", FSType: "tmpfs", Source: "tmpfs", Options: "rw,nosuid", SuperOptions: "rw,size=65536k,mode=755"},
		{Point: "/etc/hosts", Root: "/h", FSType: "ext4", Source: "/dev/sda1", Options: "rw", HostPath: "/nonexistent/nsinit/hosts"},
		{Point: "/etc/hosts/x", Root: "/h/x", FSType: "ext4", Source: "/dev/sda1", Options: "rw", BindOf: 5},
	}}
	if _, err := mountActs(ns, "/new", false); !errors.Is(err, ErrMissingBind) || !strings.Contains(err.Error(), "/nonexistent/nsinit/hosts") {
		t.Fatalf("missing host source: got %v, want ErrMissingBind naming it", err)
	}
	acts, err := mountActs(ns, "/new", true)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, a := range acts {
		if a.op == actMount {
			lines = append(lines, strings.Join([]string{a.a, a.b, a.c, a.d}, "|"))
		}
	}
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"|/|", // every mount private first
		"proc|/new/proc|proc|",
		"/new/proc/sys|/new/proc/sys||", // a bind of the restored proc, then its ro
		"tmpfs|/new/dev|tmpfs|size=65536k,mode=755",
		"/dev/null|/new/dev/null||",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no mount %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "hosts") {
		t.Errorf("the missing bind or the bind of it was not left out:\n%s", got)
	}
	if acts[0].flags != unix.MS_REC|unix.MS_PRIVATE {
		t.Errorf("first act %+v, want the namespace made private", acts[0])
	}
	for _, a := range acts {
		if a.b == "/new/proc/sys" && a.flags&unix.MS_REMOUNT != 0 && a.flags&unix.MS_RDONLY == 0 {
			t.Errorf("/proc/sys remounted without ro: %+v", a)
		}
		if a.b == "/new/proc" && a.flags != unix.MS_NOSUID|unix.MS_RELATIME {
			t.Errorf("/proc flags %#x", a.flags)
		}
	}
}

// TestMountActsNoLinksOut: a mount point that is a symbolic link in the
// new root is refused (mount(2) would follow it out of the root); one below
// an earlier mount point is not looked at (the restore makes what is there).
func TestMountActsNoLinksOut(t *testing.T) {
	root := t.TempDir()
	if err := os.Symlink("/etc", filepath.Join(root, "proc")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(root, "dev", "shm")); err != nil {
		t.Fatal(err)
	}
	proc := pstree.Mount{Point: "/proc", Root: "/", FSType: "proc", Source: "proc"}
	dev := pstree.Mount{Point: "/dev", Root: "/", FSType: "tmpfs", Source: "tmpfs"}
	shm := pstree.Mount{Point: "/dev/shm", Root: "/", FSType: "tmpfs", Source: "shm"}
	ns := &pstree.Namespace{ID: 7, Kind: pstree.MntNS, Mounts: []pstree.Mount{proc}}
	if _, err := mountActs(ns, root, false); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("proc on a link: got %v, want a refusal", err)
	}
	ns.Mounts = []pstree.Mount{dev, shm}
	if _, err := mountActs(ns, root, false); err != nil {
		t.Errorf("a link hidden under the new /dev: %v", err)
	}
}
