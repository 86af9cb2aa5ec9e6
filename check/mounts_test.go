package check

import (
	"strings"
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// mountTree is a container's tree: one task in mount namespace 7, whose
// mounts were recorded; rooted elsewhere (in the container's root) or not.
func mountTree(elsewhere bool, ms ...pstree.Mount) *pstree.Tree {
	return &pstree.Tree{
		Namespaces: []pstree.Namespace{
			{ID: 1, Kind: pstree.PidNS},
			{ID: 7, Kind: pstree.MntNS, Mounts: ms},
		},
		Tasks: []pstree.Task{{PIDs: []int{10}, PGIDs: []int{10}, SIDs: []int{10},
			NS: pstree.NSSet{pstree.PidNS: 1, pstree.MntNS: 7}, RootElsewhere: elsewhere}},
	}
}

// TestCompareMounts: where the restore re-created the mounts (the live
// task runs in another root), check names every mount point that is
// missing, extra or different, and nothing for the root mount, the
// device nodes a restore binds into a tmpfs /dev, or the host filesystem
// a bind of one of them shows; where the tree runs in this machine's root
// (--mounts host), mounts are not compared.
func TestCompareMounts(t *testing.T) {
	root := pstree.Mount{Point: "/", Root: "/c", FSType: "ext4", Source: "/dev/sda1", Options: "rw"}
	proc := pstree.Mount{Point: "/proc", Root: "/", FSType: "proc", Source: "proc", Options: "rw,nosuid"}
	dev := pstree.Mount{Point: "/dev", Root: "/", FSType: "tmpfs", Source: "tmpfs", Options: "rw,nosuid"}
	keys := pstree.Mount{Point: "/proc/keys", Root: "/null", FSType: "tmpfs", Source: "tmpfs", Options: "rw,nosuid", BindOf: 3}
	data := pstree.Mount{Point: "/data", Root: "/d", FSType: "ext4", Source: "/dev/sda1", Options: "ro", HostPath: "/srv/d"}
	img := mountTree(true, root, proc, dev, keys, data)

	hostRoot := pstree.Mount{Point: "/", Root: "/tmp/x", FSType: "tmpfs", Source: "tmpfs", Options: "rw"}
	null := pstree.Mount{Point: "/dev/null", Root: "/null", FSType: "devtmpfs", Source: "udev", Options: "rw,nosuid"}
	hostKeys := keys
	hostKeys.FSType, hostKeys.Source = "devtmpfs", "udev"
	same := mountTree(true, hostRoot, proc, dev, null, hostKeys, data)
	if d := Compare(img, renumber(same)); len(d) != 0 {
		t.Errorf("the same mounts (another root, the restore's device nodes): %v", d)
	}

	roData := data
	roData.Options = "rw"
	shm := pstree.Mount{Point: "/dev/shm", Root: "/", FSType: "tmpfs", Source: "shm", Options: "rw"}
	diff := mountTree(true, hostRoot, dev, null, hostKeys, roData, shm) // no /proc
	got := Compare(img, renumber(diff))
	var text []string
	for _, d := range got {
		text = append(text, d.String())
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{
		"mount /proc: image proc proc (rw,nosuid), live missing",
		"mount /data: image ext4 /dev/sda1 (ro), live ext4 /dev/sda1 (rw)",
		"mount /dev/shm: image missing, live tmpfs shm (rw)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no difference %q in:\n%s", want, all)
		}
	}
	if len(got) != 3 {
		t.Errorf("%d differences, want 3:\n%s", len(got), all)
	}

	// Restored in this machine's root: its mounts are this machine's.
	for _, d := range Compare(img, renumber(mountTree(false, hostRoot))) {
		if strings.Contains(d.What, "mount ") {
			t.Errorf("mounts compared in a tree restored with this machine's mounts: %v", d)
		}
	}
}
