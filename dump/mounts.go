package dump

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Mount namespace contents: the mounts one live member sees, read from
// its mountinfo (so relative to its root directory: a container's mounts
// from the container's "/"), with what a restore on another root needs
// and mountinfo does not say directly: which earlier mount a bind mount
// takes its directory from, where the dumper sees the directory of a bind
// mount from the host, and which pid namespace a proc mount shows.

// readMounts records the mounts of every mount namespace that is not
// ambient and has a live member (a zombie has left its namespaces).
func (rd *reader) readMounts() error {
	var host []procfs.MountInfo // the dumper's own, read once when needed
	for i := range rd.tree.Namespaces {
		ns := &rd.tree.Namespaces[i]
		if ns.Kind != pstree.MntNS || ns.Ambient {
			continue
		}
		pid := mountsReader(rd.tree, ns.ID)
		if pid == 0 {
			continue
		}
		ms, err := rd.r.MountInfo(pid)
		if err != nil {
			return fmt.Errorf("mount namespace %d: %w", ns.ID, err)
		}
		if host == nil {
			if host, err = procfs.SelfMountInfo(); err != nil {
				return fmt.Errorf("the dumper's own mounts: %w", err)
			}
		}
		ns.Mounts = make([]pstree.Mount, 0, len(ms))
		for j, m := range ms {
			ns.Mounts = append(ns.Mounts, rd.mount(pid, ms[:j], m, host))
		}
	}
	return nil
}

// mount is mountinfo line m of pid, after the lines before.
func (rd *reader) mount(pid int, before []procfs.MountInfo, m procfs.MountInfo, host []procfs.MountInfo) pstree.Mount {
	pm := pstree.Mount{Point: m.Point, Root: m.Root, FSType: m.FSType, Source: m.Source,
		Options: m.Options, SuperOptions: m.SuperOptions}
	for k, b := range before {
		if b.Major == m.Major && b.Minor == m.Minor && pstree.InDir(m.Root, b.Root) {
			pm.BindOf = k + 1
			break
		}
	}
	if pm.BindOf == 0 && !(pstree.KernelFS[m.FSType] && m.Root == "/") {
		pm.HostPath = hostPath(host, m)
	}
	if m.FSType == "proc" && m.Root == "/" {
		pm.PidNS = rd.procPidNS(pid, m.Point)
	}
	return pm
}

// hostPath is where the dumper sees directory m.Root of m's filesystem:
// under the first of its own mounts of that filesystem whose root
// contains it; "" when none does.
func hostPath(host []procfs.MountInfo, m procfs.MountInfo) string {
	for _, h := range host {
		if h.Major == m.Major && h.Minor == m.Minor && pstree.InDir(m.Root, h.Root) {
			rest := strings.TrimPrefix(m.Root, h.Root)
			if h.Root == "/" {
				rest = m.Root
			}
			if h.Point == "/" {
				return rest
			}
			return strings.TrimSuffix(h.Point+rest, "/")
		}
	}
	return ""
}

// procPidNS is the pid namespace the proc mount at point (in pid's view)
// shows: the one of its pid 1, a member of the tree's namespaces; 0 when
// that is not a namespace of the image (or it cannot be read).
func (rd *reader) procPidNS(pid int, point string) pstree.NSID {
	var st unix.Stat_t
	p := rd.r.Root + "/" + strconv.Itoa(pid) + "/root" + strings.TrimSuffix(point, "/") + "/1/ns/pid"
	if err := unix.Stat(p, &st); err != nil {
		return 0
	}
	return rd.ids[nsKey{pstree.PidNS, st.Ino}]
}

// mountsReader is the member of mount namespace id whose mountinfo the
// dump records: a live one whose root directory is elsewhere (a
// container's), so the points are relative to the container's root, which
// is what a restore re-creates on --root DIR; else the first live one.
// A restored container's agent runs from the host's root inside the
// restored namespace, and check reads the restored mounts through one of
// the chrooted tasks, as the dump read the original's.
func mountsReader(tr *pstree.Tree, id pstree.NSID) int {
	for _, t := range tr.Tasks {
		if t.NS[pstree.MntNS] == id && t.State != pstree.Zombie && t.RootElsewhere {
			return t.PIDs[0]
		}
	}
	return liveMember(tr, pstree.MntNS, id)
}

// liveMember is the level-0 pid of the first task of namespace id (of
// kind k) that is not a zombie, 0 when there is none.
func liveMember(tr *pstree.Tree, k pstree.NSKind, id pstree.NSID) int {
	for _, t := range tr.Tasks {
		if t.NS[k] == id && t.State != pstree.Zombie {
			return t.PIDs[0]
		}
	}
	return 0
}
