package restorer

import "fmt"

// join is a setpgid still to plan: actor moves target (0: itself) into g.
type join struct{ actor, target, g int }

// mustInherit says whether kid k of creator p can get into its group only
// by inheriting it from p: it cannot name the group, and p cannot move it
// there from an outer namespace.
func (pl *planner) mustInherit(k, p int) bool {
	g := pl.groupLeader[k]
	if g == k || g == ext || pl.sessionLeader[k] == k || pl.numAt(g, k) != 0 {
		return false
	}
	return !pl.outerMove(k, p, g)
}

// outerMove says whether p can setpgid its new child k into group g
// (F4.1: only an outer parent, which can name g, of a direct child).
func (pl *planner) outerMove(k, p, g int) bool {
	return p != Restorer && !pl.sibling[k] && pl.level(k) > pl.level(p) && pl.numAt(g, p) != 0
}

// birthGroups computes requiredBirthGroup: the group each proc must be born in (or moved to
// by its outer parent at birth) so its kids can inherit it.
func (pl *planner) birthGroups() error {
	pl.requiredBirthGroup = make([]int, len(pl.plan.Procs))
	for i := range pl.requiredBirthGroup {
		pl.requiredBirthGroup[i] = unset
	}
	for k := 1; k < len(pl.plan.Procs); k++ {
		p := pl.creator[k]
		if pl.mustInherit(k, p) && !pl.claimGroup(p, pl.groupLeader[k]) {
			if pl.leaveToParent(k) {
				continue
			}
			return fmt.Errorf("%s: group %s cannot be inherited from %s: %w", pl.plan.name(k), pl.plan.name(pl.groupLeader[k]), pl.plan.name(p), ErrUnsupported)
		}
	}
	return nil
}

// claimGroup says whether q can be in group g when it clones kids, claiming
// q's birth group if it must be born there.
func (pl *planner) claimGroup(q, g int) bool {
	switch {
	case q == Restorer:
		return g == ext
	case pl.numAt(g, q) != 0:
		// q can visit g, unless g is in the session q leads: a session
		// leader never changes its group (setpgid: EPERM), and before its
		// setsid that session does not exist.
		return pl.sessionLeader[q] != q || g == q || pl.sessionLeader[g] != q
	case pl.requiredBirthGroup[q] != unset:
		return pl.requiredBirthGroup[q] == g
	}
	if g != pl.groupLeader[q] && !pl.reachesFinalGroup(q) {
		return false // q could not leave g for its own group afterwards
	}
	cr := pl.creator[q]
	if pl.outerMove(q, cr, g) || pl.claimGroup(cr, g) {
		pl.requiredBirthGroup[q] = g
		return true
	}
	return false
}

// cloneGroup is the group creator p must be in when it clones c, or unset.
func (pl *planner) cloneGroup(c, p int) int {
	if pl.groupLeader[c] == p && pl.sessionLeader[c] != c && pl.groupLeader[p] != p {
		return p // p's own group, which p leaves later (F4.1)
	}
	if g := pl.requiredBirthGroup[c]; g != unset && (!pl.outerMove(c, p, g) || g == p && pl.groupLeader[p] != p) {
		// p cannot move c there from outside, or the group is p's
		// own, which exists only while p visits it: c is born in it.
		return g
	}
	if pl.mustInherit(c, p) {
		return pl.groupLeader[c]
	}
	return unset
}

// earlyGroup says whether c can form its own group right after its birth:
// it leads a group, not a session, and none of its kids needs to inherit
// another group. Forming groups early lets others join them.
func (pl *planner) earlyGroup(c int) bool {
	if pl.groupLeader[c] != c || pl.sessionLeader[c] == c || pl.requiredBirthGroup[c] != unset {
		return false
	}
	for _, k := range pl.kids[c] {
		if g := pl.cloneGroup(k, c); g != unset && g != c {
			return false
		}
	}
	return true
}

// setpgidTo emits actor's move of target (0 = itself) into group leader g.
func (pl *planner) setpgidTo(actor, target, g int) error {
	s := Step{Op: OpSetpgid, Actor: actor}
	who := actor
	if target != 0 {
		who = target
		s.Arg = pl.numAt(target, actor)
	}
	if g != who {
		s.Arg2 = pl.numAt(g, actor)
		if s.Arg2 == 0 {
			return fmt.Errorf("%s cannot name group %s from its namespace: %w", pl.plan.name(actor), pl.plan.name(g), ErrUnsupported)
		}
	}
	return pl.emit(s)
}

// joinOf is the setpgid that puts p into group g once g exists: p's own,
// or, when p cannot name g from its namespace, its outer parent's, which
// can move a child that has not exec'd yet (F4.1) - also after the child
// cloned the kids that had to be born in its earlier group.
func (pl *planner) joinOf(p, g int) join {
	if pl.parentMovesLater(p, g) {
		return join{pl.creator[p], p, g}
	}
	return join{p, 0, g}
}

// parentMovesLater says whether p, which cannot name group g, has a parent
// (its creator, not through CLONE_PARENT) that can name both p and g and
// so move p there (F4.1).
func (pl *planner) parentMovesLater(p, g int) bool {
	cr := pl.creator[p]
	return g >= 0 && pl.numAt(g, p) == 0 && cr >= 0 && !pl.sibling[p] && pl.numAt(g, cr) != 0 && pl.numAt(p, cr) != 0
}

// visitsOwnGroup says whether p forms a group it does not stay in: others
// end in group p, p ends in another and leads no session. Only p can form
// group p (setpgid(0, 0), F4.1), so it does so first and stays until the
// others are in (holdsGroup): a group lives only while it has a member.
func (pl *planner) visitsOwnGroup(p int) bool {
	if pl.plan.Procs[p].IsHelper() || pl.groupLeader[p] == p || pl.sessionLeader[p] == p {
		return false
	}
	for x, g := range pl.groupLeader {
		if g == p && x != p {
			return true
		}
	}
	return false
}

// holdsGroup says whether join j must wait: it takes p out of the group p
// formed (visitsOwnGroup) while a proc that ends in that group is not in
// it yet and nobody else keeps it alive.
func (pl *planner) holdsGroup(j join) bool {
	p := j.actor
	if j.target != 0 {
		p = j.target
	}
	if pl.m.procs[p].pgid != p || !pl.visitsOwnGroup(p) {
		return false
	}
	for x, g := range pl.groupLeader {
		if g == p && x != p && (pl.m.procs[x].state == mNone || pl.m.procs[x].pgid != p) {
			return true
		}
	}
	return false
}
