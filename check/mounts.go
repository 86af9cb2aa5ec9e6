package check

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/nsinit/nsinit/pstree"
)

// mountContents compares two matched mount namespaces by mount point,
// where the restore re-created the image's mounts: the image recorded them
// (minor 6) and a live task of each namespace runs in another root (with
// `restore --root DIR` the tasks are chrooted into DIR, and the dump read
// the mounts through one of them, relative to DIR). A namespace restored
// with the host's mounts (`--mounts host`, the stopped payload) has no
// task in another root: its mounts are this machine's and are not
// compared.
//
// The root mount ("/") is left out: DIR is whatever the restorer was
// given. So are the device nodes the restore binds into a tmpfs /dev it
// mounted (pstree.DevNodes), which runtimes make with mknod instead, and
// the filesystem of a bind of one of them, which is this machine's. A
// point mounted more than once is compared by its top mount, the one a
// task sees there.
func (c *comparer) mountContents(what string, na, nb *pstree.Namespace) {
	if na.Mounts == nil || !rootElsewhere(c.img, na.ID) || !rootElsewhere(c.live, nb.ID) {
		return
	}
	img, live := topMounts(na.Mounts), topMounts(nb.Mounts)
	var points []string
	for p := range img {
		points = append(points, p)
	}
	for p := range live {
		if _, ok := img[p]; !ok && !restoreDevNode(img, p) {
			points = append(points, p)
		}
	}
	slices.Sort(points)
	for _, p := range points {
		a, okA := img[p]
		b, okB := live[p]
		w := fmt.Sprintf("%s: mount %s", what, p)
		switch {
		case !okB:
			c.add(0, w, mountText(a), "missing")
		case !okA:
			c.add(0, w, "missing", mountText(b))
		case a.Options != b.Options || a.FSType != b.FSType && !ofDevNode(na.Mounts, a):
			c.add(0, w, mountText(a), mountText(b))
		}
	}
}

// ofDevNode says whether image mount m binds one of the device nodes of a
// tmpfs /dev (runc masks /proc/keys with its /dev/null): the restore
// binds this machine's node there, so the filesystem shown is the host's.
func ofDevNode(ms []pstree.Mount, m pstree.Mount) bool {
	if m.BindOf <= 0 || m.BindOf > len(ms) {
		return false
	}
	b := ms[m.BindOf-1]
	src := path.Join(b.Point, strings.TrimPrefix(m.Root, b.Root))
	return b.FSType == "tmpfs" && b.Point == "/dev" && path.Dir(src) == "/dev" && slices.Contains(pstree.DevNodes, path.Base(src))
}

// topMounts maps each mount point but "/" to its top mount.
func topMounts(ms []pstree.Mount) map[string]pstree.Mount {
	out := map[string]pstree.Mount{}
	for _, m := range ms {
		if m.Point != "/" {
			out[m.Point] = m
		}
	}
	return out
}

// restoreDevNode says whether live mount point p is one of the device
// nodes a restore binds into a tmpfs /dev the image recorded.
func restoreDevNode(img map[string]pstree.Mount, p string) bool {
	dev, ok := img[path.Dir(p)]
	return ok && dev.FSType == "tmpfs" && slices.Contains(pstree.DevNodes, path.Base(p))
}

func mountText(m pstree.Mount) string {
	return fmt.Sprintf("%s %s (%s)", m.FSType, m.Source, m.Options)
}

// rootElsewhere says whether a live task of mount namespace id runs in
// another root directory than the reader's.
func rootElsewhere(tr *pstree.Tree, id pstree.NSID) bool {
	for _, t := range tr.Tasks {
		if t.NS[pstree.MntNS] == id && t.State != pstree.Zombie && t.RootElsewhere {
			return true
		}
	}
	return false
}
