package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// Namespaces other than pid are a table: every kind below is restored the
// same way, by membership (user namespaces also get their maps, planner_userns.go). A task whose namespace of a kind is not the one
// it inherited from its creator either creates it (unshare, the first
// member the plan creates) or joins it (setns through the pidfd of a live
// member), right after its birth and before it creates anyone, so its
// kids inherit it - except a user namespace below the one its kids need
// and the namespaces that one owns, which it reaches in stages
// (planner_userstage.go). Ambient namespaces (the dumper's own) are the
// restorer's own: the level-0 cursor writer, which never leaves them, is
// the member to join them through. Contents: hostnames (uts), net
// namespace contents (netcfg.go); ipc, mnt and cgroup contents are not
// restored.
//
// Time namespaces are in the table but cannot be entered by a builder:
// the kernel refuses a time namespace switch to a process that shares its
// mm (setns: EUSERS; clone with CLONE_VM: EINVAL), and every builder is a
// CLONE_VM child. A tree using a non-ambient time namespace is refused.
var memberKinds = []pstree.NSKind{pstree.UserNS, pstree.NetNS, pstree.UTSNS, pstree.IPCNS, pstree.MntNS, pstree.CgroupNS, pstree.TimeNS}

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
// namespaces, in an order the kernel's capability and ownership rules
// allow (every builder has full capabilities in its own user namespace,
// hence in all below it):
//
//  1. it joins the existing namespaces of other kinds (setns through a
//     member; one call per member), while still in the user namespace it
//     inherited, whose capabilities reach them;
//  2. it creates the fresh namespaces owned by that user namespace;
//  3. it moves down to the user namespace it must be born in
//     (startUser: its image one unless its kids need it above, see
//     planner_userstage.go), each step a setns or an unshare together
//     with the fresh namespaces that user namespace owns (the kernel
//     creates the user namespace first and makes it their owner), a
//     member of the parent user namespace then writing the new one's maps
//     (OpUserMap); the fresh namespaces owned by a user namespace further
//     down wait until it gets there;
//  4. a new uts namespace gets its names.
func (pl *planner) memberships(c int) error {
	ti := pl.plan.Procs[c].Task
	if ti < 0 {
		return nil // helpers stay where they are born
	}
	t := &pl.tr().Tasks[ti]
	cur := pl.m.procs[c].nsk
	final := t.NS[pstree.UserNS]
	target := final
	if s := pl.startUser(c); s != 0 && pl.userAbove(cur[pstree.UserNS], s) && pl.userAbove(s, final) {
		target = s
	}
	// later: owned by a user namespace c enters after its birth.
	later := func(o pstree.NSID) bool {
		return final != 0 && o != 0 && o != cur[pstree.UserNS] && pl.userAbove(cur[pstree.UserNS], o) && pl.userAbove(o, final)
	}
	var freshOld pstree.NSSet // owned by the inherited user ns
	joins := map[int]*pstree.NSSet{}
	var order []int
	for _, k := range memberKinds {
		want := t.NS[k]
		if want == 0 || cur[k] == want || k == pstree.UserNS {
			continue // unknown (a zombie's) or inherited; user: below
		}
		ns := pl.tr().Namespace(want)
		if ns == nil || ns.Kind != k {
			return fmt.Errorf("%s: %v namespace %d is not one: %w", pl.plan.name(c), k, want, ErrBadImage)
		}
		if k == pstree.TimeNS {
			return fmt.Errorf("%s: time namespace %d differs from its creator's: a builder shares its mm and cannot switch time namespaces: %w", pl.plan.name(c), want, ErrUnsupported)
		}
		switch {
		case ns.Ambient || pl.m.made[want]:
			via := pl.memberOf(k, want)
			if via < 0 {
				return fmt.Errorf("%s: no live member of %v namespace %d to join it through: %w", pl.plan.name(c), k, want, ErrUnsupported)
			}
			if joins[via] == nil {
				joins[via] = &pstree.NSSet{}
				order = append(order, via)
			}
			joins[via][k] = want
		case later(ns.Owner):
		default:
			freshOld[k] = want
		}
	}
	for _, via := range order {
		if err := pl.emit(Step{Op: OpSetns, Actor: c, Target: via, NS: *joins[via]}); err != nil {
			return err
		}
	}
	if freshOld != (pstree.NSSet{}) {
		if err := pl.emit(Step{Op: OpUnshare, Actor: c, Target: -1, NS: freshOld}); err != nil {
			return err
		}
		if err := pl.hostname(c, freshOld); err != nil {
			return err
		}
	}
	if target == 0 || target == cur[pstree.UserNS] {
		return nil
	}
	if !pl.userAbove(cur[pstree.UserNS], target) {
		// Up the tree: the model refuses it with the kernel's errno.
		return pl.joinUser(c, target)
	}
	return pl.moveUser(c, target)
}

// moveUser moves task c down the user namespace tree to user namespace to
// (below its current one): into the deepest one on the way that exists
// (setns through a member), then creating each one left, one level per
// unshare, with the fresh namespaces of c that it owns. At each arrival c
// joins or creates its namespaces owned there.
func (pl *planner) moveUser(c int, to pstree.NSID) error {
	for n := 0; n < 64; n++ {
		cur := pl.m.procs[c].nsk[pstree.UserNS]
		if cur == to {
			return nil
		}
		next, made := to, pstree.NSID(0)
		for u := to; u != 0 && u != cur; u = pl.userParent(u) {
			if ns := pl.tr().Namespace(u); made == 0 && (pl.m.made[u] || u == pl.m.own[pstree.UserNS] || ns == nil || ns.Ambient) {
				made = u
			}
			next = u
		}
		if made != 0 {
			if err := pl.joinUser(c, made); err != nil {
				return err
			}
			if err := pl.ownedThere(c, made, false); err != nil {
				return err
			}
			continue
		}
		if err := pl.keepBeforeLeaving(c); err != nil {
			return err
		}
		if cur != pl.m.own[pstree.UserNS] {
			if err := pl.nestedCreds(c, cur, next); err != nil {
				return err
			}
		}
		if err := pl.ownedThere(c, next, true); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: user namespace %d is too deep: %w", pl.plan.name(c), to, ErrUnsupported)
}

// joinUser is c's setns into existing user namespace u through a member.
func (pl *planner) joinUser(c int, u pstree.NSID) error {
	via := pl.userMember(u)
	if via < 0 {
		return noUserMember(u, "%s: no live member of user namespace %d to join it through", pl.plan.name(c), u)
	}
	if err := pl.keepBeforeLeaving(c); err != nil {
		return err
	}
	return pl.emit(Step{Op: OpSetns, Actor: c, Target: via, NS: nsOne(pstree.UserNS, u)})
}

// ownedThere puts task c into its namespaces owned by user namespace u:
// joined if they exist, else created - together with u itself when
// create (u's maps follow), after c entered u otherwise.
func (pl *planner) ownedThere(c int, u pstree.NSID, create bool) error {
	t := &pl.tr().Tasks[pl.plan.Procs[c].Task]
	var fresh pstree.NSSet
	if create {
		fresh[pstree.UserNS] = u
	}
	for _, k := range memberKinds {
		want := t.NS[k]
		if k == pstree.UserNS || k == pstree.TimeNS || want == 0 || pl.m.procs[c].nsk[k] == want || pl.tr().Namespace(want).Owner != u {
			continue
		}
		if pl.m.made[want] {
			via := pl.memberOf(k, want)
			if via < 0 {
				return fmt.Errorf("%s: no live member of %v namespace %d to join it through: %w", pl.plan.name(c), k, want, ErrUnsupported)
			}
			if err := pl.emit(Step{Op: OpSetns, Actor: c, Target: via, NS: nsOne(k, want)}); err != nil {
				return err
			}
			continue
		}
		fresh[k] = want
	}
	if fresh == (pstree.NSSet{}) {
		return nil
	}
	if err := pl.emit(Step{Op: OpUnshare, Actor: c, Target: -1, NS: fresh}); err != nil {
		return err
	}
	if create {
		if err := pl.userMap(c, u); err != nil {
			return err
		}
	}
	return pl.hostname(c, fresh)
}

// hostname gives a uts namespace c just created its names.
func (pl *planner) hostname(c int, fresh pstree.NSSet) error {
	if id := fresh[pstree.UTSNS]; id != 0 {
		if ns := pl.tr().Namespace(id); ns.Hostname != "" || ns.Domainname != "" {
			return pl.emit(Step{Op: OpHostname, Actor: c, Target: -1})
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
