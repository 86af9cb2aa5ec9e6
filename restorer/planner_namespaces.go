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
//  3. it enters its user namespace: setns, or unshare together with the
//     fresh namespaces that user namespace owns (the kernel creates the
//     user namespace first and makes it their owner); a member of the
//     parent user namespace then writes the new one's maps (OpUserMap);
//  4. a new uts namespace gets its names.
func (pl *planner) memberships(c int) error {
	ti := pl.plan.Procs[c].Task
	if ti < 0 {
		return nil // helpers stay where they are born
	}
	t := &pl.tr().Tasks[ti]
	cur := pl.m.procs[c].nsk
	var freshOld, freshNew pstree.NSSet // owned by the inherited / by the new user ns
	joins := map[int]*pstree.NSSet{}
	var order []int
	join := func(k pstree.NSKind, want pstree.NSID) error {
		via := pl.memberOf(k, want)
		if via < 0 {
			return fmt.Errorf("%s: no live member of %v namespace %d to join it through: %w", pl.plan.name(c), k, want, ErrUnsupported)
		}
		if joins[via] == nil {
			joins[via] = &pstree.NSSet{}
			order = append(order, via)
		}
		joins[via][k] = want
		return nil
	}
	wantUser := t.NS[pstree.UserNS]
	newUser := wantUser != 0 && wantUser != cur[pstree.UserNS] && !pl.tr().Namespace(wantUser).Ambient && !pl.m.made[wantUser]
	for _, k := range memberKinds {
		want := t.NS[k]
		if want == 0 || cur[k] == want {
			continue // unknown (a zombie's) or inherited
		}
		ns := pl.tr().Namespace(want)
		if ns == nil || ns.Kind != k {
			return fmt.Errorf("%s: %v namespace %d is not one: %w", pl.plan.name(c), k, want, ErrBadImage)
		}
		if k == pstree.TimeNS {
			return fmt.Errorf("%s: time namespace %d differs from its creator's: a builder shares its mm and cannot switch time namespaces: %w", pl.plan.name(c), want, ErrUnsupported)
		}
		switch {
		case k == pstree.UserNS && newUser:
			freshNew[k] = want
		case k == pstree.UserNS:
			// joined last (step 3), see below
		case ns.Ambient || pl.m.made[want]:
			if err := join(k, want); err != nil {
				return err
			}
		case newUser && ns.Owner == wantUser:
			freshNew[k] = want
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
	}
	if wantUser != 0 && wantUser != cur[pstree.UserNS] && !newUser {
		via := pl.memberOf(pstree.UserNS, wantUser)
		if via < 0 {
			return fmt.Errorf("%s: no live member of user namespace %d to join it through: %w", pl.plan.name(c), wantUser, ErrUnsupported)
		}
		var s pstree.NSSet
		s[pstree.UserNS] = wantUser
		if err := pl.emit(Step{Op: OpSetns, Actor: c, Target: via, NS: s}); err != nil {
			return err
		}
	}
	if freshNew != (pstree.NSSet{}) {
		if newUser && cur[pstree.UserNS] != pl.m.own[pstree.UserNS] {
			if err := pl.nestedCreds(c, cur[pstree.UserNS], wantUser); err != nil {
				return err
			}
		}
		if err := pl.emit(Step{Op: OpUnshare, Actor: c, Target: -1, NS: freshNew}); err != nil {
			return err
		}
		if newUser {
			if err := pl.userMap(c, wantUser); err != nil {
				return err
			}
		}
	}
	for _, fresh := range []pstree.NSSet{freshOld, freshNew} {
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
