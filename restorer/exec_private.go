package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// keepPrivate makes the memory the restorer shares with every builder
// non-dumpable for the whole restore when a builder would otherwise be a
// way into it (privateReason). While the shared mm is dumpable, a process
// of the same uid in the same user namespace whose capabilities cover the
// builder's, or one with CAP_SYS_PTRACE in the builder's user namespace
// (its owner), passes the kernel's ptrace check on the builder
// (docs/kernel.md F8.4) and with it reads and writes the restorer's
// memory: root's. Non-dumpable, only a caller with CAP_SYS_PTRACE in the
// restorer's own user namespace passes. The builders that thereby lose
// their own access to their fellows (those in child user namespaces) get
// namespace files from the restorer instead (builder_linux.go, setnsVia).
//
// Otherwise the memory stays dumpable, as it was: a builder that takes the
// image's ids at its last step leaves at once (passOrLeave), and zombies die
// dumpable, which a reader of their /proc files without CAP_SYS_PTRACE in
// the initial user namespace needs (docs/kernel.md F8.4).
//
// A restorer without CAP_SYS_PTRACE could not open the namespace files
// either: it refuses such a plan.
func (t *tx) keepPrivate() error {
	why := privateReason(t.p, uint32(unix.Geteuid()))
	if why == "" && forcePrivate {
		why = "forced (tests)"
	}
	if why == "" {
		// Stopped payloads of an earlier private restore may still share
		// this process's memory: it stays private for them.
		d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		if err != nil || d == 1 || !hasCap(unix.CAP_SYS_PTRACE) {
			return nil
		}
		why = "this process is not dumpable"
	}
	if !hasCap(unix.CAP_SYS_PTRACE) {
		return fmt.Errorf("%s: the restorer cannot keep its memory from that uid without CAP_SYS_PTRACE: %w", why, ErrCapability)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("make the builders' memory non-dumpable: %w", err)
	}
	t.hdr().private = 1
	t.private = true
	return nil
}

// forcePrivate makes every restore keep its memory private (tests).
var forcePrivate bool

// privateReason says which builder would hold, while it shares the
// restorer's memory, credentials another uid could ptrace it with: one
// that switches to another uid in the restorer's own user namespace (its
// user namespaces are then that uid's), or a stopped payload that waits
// there, forever, with its image's ids. "" for none. A builder inside a
// user namespace the restore created is out of reach of every process
// outside it: such a namespace is owned by the restorer's uid, and so is
// the top of every chain of them (docs/kernel.md F8.4).
func privateReason(p *Plan, euid uint32) string {
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Op != OpSetCreds || !ownUserNS(p.Tree, s.NS[pstree.UserNS]) || uint32(s.Arg) == euid {
			continue
		}
		return fmt.Sprintf("step %d (%s by %s) takes uid %d", i, p.describe(s), p.name(s.Actor), s.Arg)
	}
	if p.Options.Payload != PayloadStopped {
		return ""
	}
	for i := range p.Procs {
		ti := p.Procs[i].Task
		if ti < 0 {
			continue
		}
		tk := &p.Tree.Tasks[ti]
		if tk.State == pstree.Zombie || !ownUserNS(p.Tree, tk.NS[pstree.UserNS]) {
			continue
		}
		c := tk.Creds
		for _, id := range []uint32{c.UID, c.EUID, c.SUID, c.FSUID} {
			if id != euid {
				return fmt.Sprintf("%s stops with uid %d", p.name(i), id)
			}
		}
		// Same uid, fewer capabilities: a process of that uid whose
		// capabilities cover the task's passes the check too (F8.4).
		if prm, eff, ok := ownCaps(); !ok || c.CapPrm&prm != prm || c.CapEff&eff != eff {
			return fmt.Sprintf("%s stops with fewer capabilities than the restorer", p.name(i))
		}
	}
	return ""
}

// ownCaps reads the calling thread's permitted and effective capabilities.
func ownCaps() (prm, eff uint64, ok bool) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, 0, false
	}
	prm = uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	eff = uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	return prm, eff, true
}

// ownUserNS says whether u is the restorer's own user namespace: the
// image's ambient one (or none).
func ownUserNS(tr *pstree.Tree, u pstree.NSID) bool {
	ns := tr.Namespace(u)
	return ns == nil || ns.Ambient
}

// restoreDumpable makes this process dumpable again after the restore
// (builders that changed credentials may have left it not), unless it kept
// the memory private and stopped payloads stay in it: they share it as
// long as they live.
func (t *tx) restoreDumpable() {
	if t.private && t.committed && t.p.Options.Payload == PayloadStopped {
		return
	}
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
}
