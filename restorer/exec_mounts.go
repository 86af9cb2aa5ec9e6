package restorer

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// A container's mounts on Options.Root (docs/restore.md, "A container's
// filesystem"). For each mount namespace the restore creates whose mounts
// the image recorded and whose members ran in another root, one builder
// - the mounter - re-creates them on Root before its exec: in the new
// mount namespace it is already in, made private first so that nothing
// propagates to this machine's mounts, with the kernel's filesystems
// mounted afresh for the mounter's own namespaces (proc shows its pid
// namespace, so the planner's mounter is a task of the pid namespace the
// recorded proc showed), a tmpfs /dev given the usual device nodes of
// this machine, bind mounts of recorded mounts taken from their copies
// inside Root, and bind mounts from the host from the path the dumper
// saw, which must exist here. The tasks then chroot into Root as before.
// The builder performs the list of mountActs below with raw system calls
// (builder_mounts_linux.go); this file only decides it.

// What a mountAct does.
const (
	actMkdir   = iota + 1 // mkdir(a); an existing one is fine
	actLike               // make b what a is: a directory or an empty file; an existing one is fine
	actMount              // mount(a, b, c, flags, d)
	actSymlink            // symlink(a, b); an existing one is fine
)

// mountAct is one action as the builder reads it: addresses of C strings
// in the block (0: NULL).
type mountAct struct {
	op, a, b, c, flags, d uint64
}

// act is a mountAct before layout, with what it is for (error messages).
type act struct {
	op         uint64
	a, b, c, d string
	flags      uintptr
	what       string
}

// devLinks are the links a tmpfs /dev gets beside its device nodes
// (pstree.DevNodes).
var (
	devLinks = [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}, {"pts/ptmx", "ptmx"}}
)

// mountFlags are the mount(2) flags of mountinfo's per-mount options.
var mountFlags = map[string]uintptr{
	"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV, "noexec": unix.MS_NOEXEC,
	"sync": unix.MS_SYNCHRONOUS, "dirsync": unix.MS_DIRSYNC, "noatime": unix.MS_NOATIME,
	"nodiratime": unix.MS_NODIRATIME, "relatime": unix.MS_RELATIME, "strictatime": unix.MS_STRICTATIME,
	"nosymfollow": unix.MS_NOSYMFOLLOW,
}

// ErrMissingBind: a bind mount from the host whose source does not exist
// on this machine (Options.SkipMissingBinds). It wraps ErrUnsupported.
var ErrMissingBind = fmt.Errorf("bind mount source missing: %w", ErrUnsupported)

// mounters returns, per proc that re-creates a mount namespace's mounts,
// that namespace; empty unless the exec payload runs in Options.Root.
func mounters(p *Plan) map[int]pstree.NSID {
	out := map[int]pstree.NSID{}
	if p.Options.Payload != PayloadExec || p.Options.Root == "" {
		return out
	}
	first := map[int]int{} // proc -> its payload step
	for i, s := range p.Steps {
		if s.Op == OpPayload {
			first[s.Actor] = i
		}
	}
	for _, ns := range p.Tree.Namespaces {
		if ns.Kind != pstree.MntNS || ns.Ambient || len(ns.Mounts) == 0 || !rootElsewhere(p.Tree, ns.ID) {
			continue
		}
		if m := mounterOf(p, &ns, first); m >= 0 {
			out[m] = ns.ID
		}
	}
	return out
}

// rootElsewhere says whether a live task of mount namespace id ran in
// another root.
func rootElsewhere(tr *pstree.Tree, id pstree.NSID) bool {
	for _, t := range tr.Tasks {
		if t.NS[pstree.MntNS] == id && t.RootElsewhere && t.State != pstree.Zombie {
			return true
		}
	}
	return false
}

// mounterOf picks the proc of mount namespace ns whose payload comes
// first, among those of the pid namespace its first proc mount showed
// when there are any: the mounts exist before the others exec (but for a
// task of the namespace whose payload comes before, documented), and proc
// shows the right pids. -1 when no task of ns has a payload.
func mounterOf(p *Plan, ns *pstree.Namespace, payload map[int]int) int {
	var procNS pstree.NSID
	for _, m := range ns.Mounts {
		if m.FSType == "proc" && m.PidNS != 0 {
			procNS = m.PidNS
			break
		}
	}
	best, bestIn := -1, false
	for i, pr := range p.Procs {
		st, ok := payload[i]
		if pr.Task < 0 || !ok || p.Tree.Tasks[pr.Task].NS[pstree.MntNS] != ns.ID {
			continue
		}
		in := pr.NS == procNS
		if best < 0 || in && !bestIn || in == bestIn && st < payload[best] {
			best, bestIn = i, in
		}
	}
	return best
}

// mountActs is what the mounter of ns does on root.
func mountActs(ns *pstree.Namespace, root string, skipMissing bool) ([]act, error) {
	acts := []act{{op: actMount, b: "/", flags: unix.MS_REC | unix.MS_PRIVATE,
		what: "make every mount of the new mount namespace private"}}
	ms := ns.Mounts
	if err := noLinksOut(ms, root); err != nil {
		return nil, fmt.Errorf("mount namespace %d: %w", ns.ID, err)
	}
	skipped := make([]bool, len(ms))
	for i, m := range ms {
		if m.Point == "/" {
			continue // root itself
		}
		tgt := path.Join(root, m.Point)
		what := fmt.Sprintf("mount %d (%s %s on %s)", i, m.FSType, m.Source, m.Point)
		flags, data := optionFlags(m.Options), superData(m.SuperOptions)
		var src string
		switch {
		case m.BindOf > 0:
			if skipped[m.BindOf-1] {
				skipped[i] = true
				continue
			}
			b := ms[m.BindOf-1]
			src = path.Join(root, b.Point, strings.TrimPrefix(m.Root, b.Root))
		case pstree.KernelFS[m.FSType] && m.Root == "/":
			acts = append(acts, mkdirs(root, m.Point)...)
			acts = append(acts, act{op: actMount, a: m.Source, b: tgt, c: m.FSType, d: data, flags: flags, what: what})
			if m.FSType == "tmpfs" && m.Point == "/dev" {
				acts = append(acts, devActs(tgt)...)
			}
			continue
		default:
			if err := hostSource(m); err != nil {
				if !skipMissing {
					return nil, fmt.Errorf("mount namespace %d: %s: %w", ns.ID, what, err)
				}
				skipped[i] = true
				continue
			}
			src = m.HostPath
		}
		acts = append(acts, mkdirs(root, path.Dir(m.Point))...)
		acts = append(acts, bindActs(src, tgt, flags, what)...)
	}
	return acts, nil
}

// MissingBinds lists the bind mounts from the host that a restore of tr
// on root would need and this machine lacks, as an error each: the
// restore refuses them, or leaves them out with Options.SkipMissingBinds
// (the caller warns with this list).
func MissingBinds(tr *pstree.Tree, opt Options) []error {
	var out []error
	if opt.Payload != PayloadExec || opt.Root == "" {
		return nil
	}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		if ns.Kind != pstree.MntNS || ns.Ambient || !rootElsewhere(tr, ns.ID) {
			continue
		}
		for j, m := range ns.Mounts {
			if m.Point == "/" || m.BindOf > 0 || pstree.KernelFS[m.FSType] && m.Root == "/" {
				continue
			}
			if err := hostSource(m); err != nil {
				out = append(out, fmt.Errorf("mount namespace %d: mount %d (%s on %s): %w", ns.ID, j, m.FSType, m.Point, err))
			}
		}
	}
	return out
}

// noLinksOut refuses a mount point whose path crosses a symbolic link in
// root as it is now: mount(2) would follow it, possibly out of root (a
// rootfs whose proc is a link to /etc). Only the part of each path in
// root's own filesystem is looked at: below an earlier mount point, the
// restore made or mounted what is there.
func noLinksOut(ms []pstree.Mount, root string) error {
	for i, m := range ms {
		p := root
		for _, c := range strings.Split(strings.TrimPrefix(m.Point, "/"), "/") {
			if c == "" || under(ms[:i], strings.TrimPrefix(p, root)) {
				break
			}
			p = path.Join(p, c)
			st, err := os.Lstat(p)
			if err != nil {
				break // made by the restore
			}
			if st.Mode()&os.ModeSymlink != 0 {
				return fmt.Errorf("mount %d (%s on %s): %s is a symbolic link, which a mount there would follow: %w",
					i, m.FSType, m.Point, p, ErrUnsupported)
			}
		}
	}
	return nil
}

// under says whether dir (absolute from the root, "" for the root) is at
// or below one of ms's mount points other than "/".
func under(ms []pstree.Mount, dir string) bool {
	for _, m := range ms {
		if m.Point != "/" && dir != "" && pstree.InDir(dir, m.Point) {
			return true
		}
	}
	return false
}

// hostSource checks that a bind mount from the host has its source here.
func hostSource(m pstree.Mount) error {
	if m.HostPath == "" {
		return fmt.Errorf("a bind mount of %s:%s, which the dumper did not see mounted: %w", m.Source, m.Root, ErrMissingBind)
	}
	if _, err := os.Stat(m.HostPath); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("its source %s does not exist on this machine (--skip-missing-binds leaves it out): %w", m.HostPath, ErrMissingBind)
		}
		return err
	}
	return nil
}

// mkdirs creates every directory from root down to root+dir.
func mkdirs(root, dir string) []act {
	var acts []act
	p := root
	for _, c := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if c == "" {
			continue
		}
		p = path.Join(p, c)
		acts = append(acts, act{op: actMkdir, a: p, what: "mkdir " + p})
	}
	return acts
}

// bindActs binds src on tgt (made like src) and applies flags, which a
// bind mount takes only through a remount.
func bindActs(src, tgt string, flags uintptr, what string) []act {
	acts := []act{
		{op: actLike, a: src, b: tgt, what: what + ": create " + tgt},
		{op: actMount, a: src, b: tgt, flags: unix.MS_BIND, what: what + ": bind " + src},
	}
	if flags != 0 {
		acts = append(acts, act{op: actMount, b: tgt, flags: unix.MS_BIND | unix.MS_REMOUNT | flags, what: what + ": its options"})
	}
	return acts
}

// devActs gives a fresh tmpfs /dev this machine's usual device nodes and
// their links.
func devActs(dev string) []act {
	var acts []act
	for _, n := range pstree.DevNodes {
		acts = append(acts, bindActs("/dev/"+n, path.Join(dev, n), 0, "device node /dev/"+n)...)
	}
	for _, l := range devLinks {
		acts = append(acts, act{op: actSymlink, a: l[0], b: path.Join(dev, l[1]), what: "link /dev/" + l[1]})
	}
	return acts
}

// optionFlags turns per-mount options into mount(2) flags. mountinfo
// names no atime option for a mount with strict atime, while mount(2)
// without one gives relatime: so none is MS_STRICTATIME (nsinit check
// found the restored tmpfs /dev relatime where runc's was not).
func optionFlags(opts string) uintptr {
	var f uintptr
	for _, o := range strings.Split(opts, ",") {
		f |= mountFlags[o]
	}
	if f&(unix.MS_NOATIME|unix.MS_RELATIME|unix.MS_STRICTATIME) == 0 {
		f |= unix.MS_STRICTATIME
	}
	return f
}

// superData is a filesystem's own options as mount(2)'s data: without
// "rw" and "ro", which are the mount's (optionFlags).
func superData(opts string) string {
	var keep []string
	for _, o := range strings.Split(opts, ",") {
		if o != "" && o != "rw" && o != "ro" {
			keep = append(keep, o)
		}
	}
	return strings.Join(keep, ",")
}

// addMounts lays out each mounter's actions (exec_layout.go).
func (l *layout) addMounts() error {
	p := l.p
	for i, id := range mounters(p) {
		acts, err := mountActs(p.Tree.Namespace(id), p.Options.Root, p.Options.SkipMissingBinds)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name(i), err)
		}
		offs := make([][4]int, len(acts))
		for j, a := range acts {
			for k, s := range [4]string{a.a, a.b, a.c, a.d} {
				offs[j][k] = -1
				if s != "" {
					offs[j][k] = l.strs.cstr(s)
				}
			}
		}
		l.strs.align()
		l.procs[i].mounts = len(l.strs.buf)
		for j, a := range acts {
			l.strs.buf = unsafeAppendU64(l.strs.buf, a.op)
			for k := range 4 {
				if k == 3 {
					l.strs.buf = unsafeAppendU64(l.strs.buf, uint64(a.flags))
				}
				if offs[j][k] < 0 {
					l.strs.buf = unsafeAppendU64(l.strs.buf, 0)
					continue
				}
				l.strs.ptrs = append(l.strs.ptrs, len(l.strs.buf))
				l.strs.buf = unsafeAppendU64(l.strs.buf, uint64(offs[j][k]))
			}
		}
		l.procs[i].nmounts = len(acts)
		l.mountWhat[i] = acts
	}
	return nil
}
