package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// Namespaces other than pid are a table: every kind below is restored the
// same way, by membership. A task whose namespace of a kind is not the one
// it inherited from its creator either creates it (unshare, the first
// member the plan creates) or joins it (setns through the pidfd of a live
// member), right after its birth and before it creates anyone, so its
// kids inherit it. Ambient namespaces (the dumper's own) are the
// restorer's own: the level-0 cursor writer, which never leaves them, is
// the member to join them through. Contents: hostnames (uts), net
// namespace contents (netcfg.go); ipc, mnt and cgroup contents are not
// restored.
//
// Time namespaces are in the table but cannot be entered by a builder:
// the kernel refuses a time namespace switch to a process that shares its
// mm (setns: EUSERS; clone with CLONE_VM: EINVAL), and every builder is a
// CLONE_VM child. A tree using a non-ambient time namespace is refused.
var memberKinds = []pstree.NSKind{pstree.NetNS, pstree.UTSNS, pstree.IPCNS, pstree.MntNS, pstree.CgroupNS, pstree.TimeNS}

// outsideNS stands for a namespace the image does not know: the
// restorer's own of a kind that has no ambient namespace in the image.
const outsideNS = ^pstree.NSID(0)

// restorerNS is the namespace set the restorer runs in, as image ids.
func restorerNS(tr *pstree.Tree) pstree.NSSet {
	var s pstree.NSSet
	for _, k := range memberKinds {
		s[k] = outsideNS
	}
	for _, n := range tr.Namespaces {
		if n.Ambient && n.Kind != pstree.PidNS {
			s[n.Kind] = n.ID
		}
	}
	return s
}

// memberships emits the steps that put the new image task c into its
// namespaces: one unshare for the kinds it is the first member of, one
// setns per member it joins others through, then its hostname.
func (pl *planner) memberships(c int) error {
	ti := pl.plan.Procs[c].Task
	if ti < 0 {
		return nil // helpers stay where they are born
	}
	t := &pl.tr().Tasks[ti]
	var fresh pstree.NSSet
	joins := map[int]*pstree.NSSet{}
	var order []int
	for _, k := range memberKinds {
		want := t.NS[k]
		if want == 0 || pl.m.procs[c].nsk[k] == want {
			continue // unknown (a zombie's) or inherited
		}
		ns := pl.tr().Namespace(want)
		if ns == nil || ns.Kind != k {
			return fmt.Errorf("%s: %v namespace %d is not one: %w", pl.plan.name(c), k, want, ErrBadImage)
		}
		if k == pstree.TimeNS {
			return fmt.Errorf("%s: time namespace %d differs from its creator's: a builder shares its mm and cannot switch time namespaces: %w", pl.plan.name(c), want, ErrUnsupported)
		}
		if !ns.Ambient && !pl.m.made[want] {
			fresh[k] = want
			continue
		}
		via := pl.memberOf(k, want)
		if via < 0 {
			return fmt.Errorf("%s: no live member of %v namespace %d to join it through: %w", pl.plan.name(c), k, want, ErrUnsupported)
		}
		if joins[via] == nil {
			joins[via] = &pstree.NSSet{}
			order = append(order, via)
		}
		joins[via][k] = want
	}
	for _, via := range order {
		if err := pl.emit(Step{Op: OpSetns, Actor: c, Target: via, NS: *joins[via]}); err != nil {
			return err
		}
	}
	if fresh != (pstree.NSSet{}) {
		if err := pl.emit(Step{Op: OpUnshare, Actor: c, Target: -1, NS: fresh}); err != nil {
			return err
		}
		if id := fresh[pstree.UTSNS]; id != 0 {
			if ns := pl.tr().Namespace(id); ns.Hostname != "" || ns.Domainname != "" {
				if err := pl.emit(Step{Op: OpHostname, Actor: c, Target: -1}); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// memberOf is a live proc in namespace id of kind k (the cursor writer for
// the restorer's own), or -1.
func (pl *planner) memberOf(k pstree.NSKind, id pstree.NSID) int {
	if pl.m.procs[pl.w0].state == mAlive && pl.m.procs[pl.w0].nsk[k] == id {
		return pl.w0
	}
	for p := range pl.m.procs {
		if q := &pl.m.procs[p]; q.state == mAlive && q.nsk[k] == id {
			return p
		}
	}
	return -1
}

// hostnameOf is the hostname and domain name step s of proc actor sets:
// those of its uts namespace.
func hostnameOf(p *Plan, actor int) (host, domain string) {
	t := p.Procs[actor].Task
	if t < 0 {
		return "", ""
	}
	ns := p.Tree.Namespace(p.Tree.Tasks[t].NS[pstree.UTSNS])
	if ns == nil {
		return "", ""
	}
	return ns.Hostname, ns.Domainname
}

// unshareNS is the model of unshare(2) for the member kinds: each
// namespace is created once, by its first member.
func (m *model) unshareNS(pl *Plan, s *Step) error {
	a := &m.procs[s.Actor]
	m.saveProc(s.Actor)
	for k, id := range s.NS {
		if id == 0 {
			continue
		}
		if NSKindPid(k) {
			return fmt.Errorf("unshare of a pid namespace is OpSetPFC's")
		}
		if m.made[id] {
			return fmt.Errorf("%v namespace %d created twice", pstree.NSKind(k), id)
		}
		m.setMade(id)
		a.nsk[k] = id
	}
	return nil
}

// setnsNS is the model of setns(pidfd, flags): every kind joined must be
// the target's.
func (m *model) setnsNS(pl *Plan, s *Step) error {
	if s.Target < 0 || s.Target >= len(m.procs) || m.procs[s.Target].state != mAlive {
		return fmt.Errorf("setns through proc %d: not alive: ESRCH", s.Target)
	}
	a, t := &m.procs[s.Actor], &m.procs[s.Target]
	m.saveProc(s.Actor)
	for k, id := range s.NS {
		if id == 0 {
			continue
		}
		if t.nsk[k] != id {
			return fmt.Errorf("setns %v through %s: it is in %d, not %d", pstree.NSKind(k), pl.name(s.Target), t.nsk[k], id)
		}
		a.nsk[k] = id
	}
	return nil
}

// NSKindPid says whether kind k is handled by the pid machinery.
func NSKindPid(k int) bool {
	return pstree.NSKind(k) == pstree.PidNS || pstree.NSKind(k) == pstree.PidForChildrenNS
}

func (m *model) setMade(id pstree.NSID) {
	if m.journal {
		m.undo = append(m.undo, func() { delete(m.made, id) })
	}
	m.made[id] = true
}

// compareNS checks a live task's namespaces of the member kinds.
func (m *model) compareNS(name string, t *pstree.Task, p *mproc) error {
	for _, k := range memberKinds {
		if want := t.NS[k]; want != 0 && p.nsk[k] != want {
			return fmt.Errorf("%s: %v namespace %d, want %d", name, k, p.nsk[k], want)
		}
	}
	return nil
}
