package dump

import (
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// TestDumpMounts: a mount namespace of its own with a proc of the inner
// pid namespace and a tmpfs (unshare --mount-proc), as its member sees
// them: the proc's pid namespace is the inner one, the tmpfs is a whole
// kernel filesystem (no host path), and the root mount is where the
// dumper sees it. The dumper's own mount namespace records nothing.
func TestDumpMounts(t *testing.T) {
	tt := startTree(t, `unshare -m -p -f --mount-proc busybox sh -c '
  busybox mount -t tmpfs -o size=1m,mode=700 nsinit-test /mnt
  exec busybox sleep 1000' &
exec busybox sleep 1000`, 3, false)
	tr, err := Dump(tt.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pstree.Validate(tr); err != nil {
		t.Fatal(err)
	}
	var inner *pstree.Task
	for i := range tr.Tasks {
		if tr.Tasks[i].Level() == 1 {
			inner = &tr.Tasks[i]
		}
	}
	if inner == nil {
		t.Fatal("no task in the inner pid namespace")
	}
	if own := tr.Namespace(tr.Tasks[0].NS[pstree.MntNS]); !own.Ambient || own.Mounts != nil {
		t.Errorf("the dumper's mount namespace: ambient %v, %d mounts", own.Ambient, len(own.Mounts))
	}
	mnt := tr.Namespace(inner.NS[pstree.MntNS])
	byPoint := map[string]pstree.Mount{}
	for _, m := range mnt.Mounts {
		byPoint[m.Point] = m // the last one mounted there is on top
	}
	if r := byPoint["/"]; r.HostPath != "/" {
		t.Errorf("root mount %+v: host path %q, want /", r, r.HostPath)
	}
	if p := byPoint["/proc"]; p.FSType != "proc" || p.PidNS != inner.NS[pstree.PidNS] {
		t.Errorf("/proc: %+v, want a proc of pid namespace %d", p, inner.NS[pstree.PidNS])
	}
	if m := byPoint["/mnt"]; m.FSType != "tmpfs" || m.Source != "nsinit-test" || m.HostPath != "" || m.BindOf != 0 {
		t.Errorf("/mnt: %+v, want the tmpfs nsinit-test", m)
	}
}
