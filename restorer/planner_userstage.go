package restorer

import (
	"github.com/nsinit/nsinit/pstree"
)

// A task's user namespace over time. A task only ever moves down the user
// namespace tree (setns into a user namespace needs CAP_SYS_ADMIN in it,
// which a task has in its own and the ones below; unshare makes a child of
// its current one), so between its birth and its image user namespace F it
// passes through ancestors of F, and each child it creates inherits the one
// it is in at that moment. A task that created children (or wrote the cursor
// of its pid namespace for them) before it went further down must be born
// above F and create those children first: its *stages*.
//
// The planner computes, statically, where each task must be while it
// creates each kid (userNeed) and so where it must be at its birth
// (startUser); memberships puts the new task there, cloneKid moves its
// creator down to what each kid needs, and expand moves it to F after its
// last kid (settleUser). A task whose kids need nothing above F is born
// straight into F, as before. The model checks every move as the kernel
// would: no move up, no user namespace change by a task with threads.

// finalUser is proc p's user namespace in the image, 0 for a helper or
// when unknown (a zombie's).
func (pl *planner) finalUser(p int) pstree.NSID {
	if t := pl.plan.Procs[p].Task; t >= 0 {
		return pl.tr().Tasks[t].NS[pstree.UserNS]
	}
	return 0
}

// userParent is user namespace u's parent as the model names it (the
// restorer's own for the image's ambient one).
func (pl *planner) userParent(u pstree.NSID) pstree.NSID {
	ns := pl.tr().Namespace(u)
	if ns == nil || ns.Ambient {
		return 0
	}
	if ns.Parent == 0 || pl.tr().Namespace(ns.Parent).Ambient {
		return pl.m.own[pstree.UserNS]
	}
	return ns.Parent
}

// userAbove says whether user namespace a is u or one of its ancestors.
func (pl *planner) userAbove(a, u pstree.NSID) bool { return pl.m.capable(a, u) }

// deepestAbove is the deepest ancestor-or-self of f that is above every
// namespace of all (0 entries are ignored).
func (pl *planner) deepestAbove(f pstree.NSID, all ...pstree.NSID) pstree.NSID {
	for u, n := f, 0; u != 0 && n < 64; u, n = pl.userParent(u), n+1 {
		ok := true
		for _, x := range all {
			if x != 0 && !pl.userAbove(u, x) {
				ok = false
				break
			}
		}
		if ok {
			return u
		}
	}
	return pl.m.own[pstree.UserNS]
}

// bornUser is the deepest user namespace proc c can be born in and still
// create its kids: a task's startUser; for a helper (which never changes
// user namespace) the deepest one above what every kid of it needs; 0
// when nothing constrains it.
func (pl *planner) bornUser(c int) pstree.NSID {
	if pl.plan.Procs[c].Task >= 0 {
		return pl.startUser(c)
	}
	var need []pstree.NSID
	for _, k := range pl.kids[c] {
		if u := pl.bornUser(k); u != 0 {
			need = append(need, u)
		}
	}
	if len(need) == 0 {
		return 0
	}
	return pl.deepestAbove(need[0], need[1:]...)
}

// startUser is the user namespace task p must be in at its birth: the
// shallowest of what its kids need and its image one.
func (pl *planner) startUser(p int) pstree.NSID {
	if u, ok := pl.starts[p]; ok {
		return u
	}
	pl.starts[p] = pl.finalUser(p) // a creator cycle ends here
	f := pl.finalUser(p)
	s := f
	if o := pl.lostOwner(p); o != 0 {
		s = pl.deepestAbove(f, o)
	}
	if f != 0 {
		for _, k := range pl.kids[p] {
			if n := pl.userNeed(p, k); n != 0 && pl.userAbove(n, s) {
				s = n
			}
		}
	}
	pl.starts[p] = s
	return s
}

// userNeed is the deepest user namespace on task p's way to its image one
// in which p can create kid c: above where c must be born, above the owner
// of the pid namespace c is the init of (or its parent, which creates it
// with CLONE_NEWUSER), and, when p is an init whose image user namespace
// has no capability over its pid namespace's owner, above that owner (p
// writes that namespace's cursor for c). 0: anywhere.
func (pl *planner) userNeed(p, c int) pstree.NSID {
	f := pl.finalUser(p)
	if f == 0 {
		return 0
	}
	need := []pstree.NSID{pl.bornUser(c)}
	if pl.isInitOf(c, pl.plan.Procs[c].NS) {
		if o := pl.tr().Namespace(pl.plan.Procs[c].NS).Owner; o != 0 {
			if !pl.userAbove(o, f) {
				o = pl.userParent(o)
			}
			need = append(need, o)
		}
	}
	if cn, pn := pl.plan.Procs[c].NS, pl.plan.Procs[p].NS; cn != pn && !(pl.isInitOf(c, cn) && pl.tr().Namespace(cn).Parent == pn) {
		// c is born through setns into a pid namespace: p needs
		// CAP_SYS_ADMIN over its owner (or sets its pid_for_children
		// while it has it, placeClone)
		if o := pl.tr().Namespace(cn).Owner; o != 0 && !pl.userAbove(f, o) {
			need = append(need, o)
		}
	}
	if pr := &pl.plan.Procs[p]; pl.isInitOf(p, pr.NS) {
		// p writes its namespace's cursor for c (F8.3)
		if o := pl.tr().Namespace(pr.NS).Owner; o != 0 && !pl.userAbove(f, o) {
			need = append(need, o)
		}
	}
	return pl.deepestAbove(f, need...)
}

// stageUser moves task p down to user namespace to before it creates a kid
// that needs it, when to is below where p is; otherwise p stays (the model
// refuses what cannot be).
func (pl *planner) stageUser(p int, to pstree.NSID) error {
	if pl.plan.Procs[p].Task < 0 || to == 0 {
		return nil
	}
	cur := pl.m.procs[p].nsk[pstree.UserNS]
	if cur == to || !pl.userAbove(cur, to) || !pl.userAbove(to, pl.finalUser(p)) {
		return nil
	}
	return pl.moveUser(p, to)
}

// settleUser moves task p to its image user namespace after its last kid,
// then creates its threads (a task with threads cannot change user
// namespace: unshare and setns give EINVAL).
func (pl *planner) settleUser(p int) error {
	if pl.lostOwner(p) != 0 && !pl.finishing {
		pl.lateSettles = append(pl.lateSettles, p)
		return nil
	}
	if f := pl.finalUser(p); f != 0 && pl.m.procs[p].nsk[pstree.UserNS] != f {
		if err := pl.earlyPFC(p, f); err != nil {
			return err
		}
		if err := pl.moveUser(p, f); err != nil {
			return err
		}
	}
	return pl.threads(p)
}

// earlyPFC sets task p's pid_for_children before p moves down to its image
// user namespace f when f has no capability over that pid namespace's
// owner (setns and unshare of CLONE_NEWPID need it, and unshare makes the
// caller's user namespace the owner): p did it before it moved. Otherwise
// the finish phase does it (pidForChildren).
func (pl *planner) earlyPFC(p int, f pstree.NSID) error {
	t := &pl.tr().Tasks[pl.plan.Procs[p].Task]
	want := t.NS[pstree.PidForChildrenNS]
	if t.State == pstree.Zombie || want == 0 || want == t.NS[pstree.PidNS] || pl.m.procs[p].pfc == want {
		return nil
	}
	o := pl.tr().Namespace(want).Owner
	if o == 0 || pl.userAbove(f, o) || !pl.userAbove(pl.m.procs[p].nsk[pstree.UserNS], o) {
		return nil
	}
	return pl.emit(pl.pfcStep(p, want))
}

// lostOwner is, for an init whose image user namespace has no capability
// over its pid namespace's owner, that owner, else 0. In the original the
// init went down after the kernel had given the namespace's pids; in the
// plan it writes that namespace's cursor (F8.3) for every clone into it and
// at the end, so it stays above until the finish phase has written the
// final cursor (finishUsers).
func (pl *planner) lostOwner(p int) pstree.NSID {
	pr := &pl.plan.Procs[p]
	f := pl.finalUser(p)
	if f == 0 || !pl.isInitOf(p, pr.NS) || pl.tr().Tasks[pr.Task].State == pstree.Zombie {
		return 0
	}
	if o := pl.tr().Namespace(pr.NS).Owner; o != 0 && !pl.userAbove(f, o) {
		return o
	}
	return 0
}

// finishUsers moves the inits lostOwner kept above to their image user
// namespaces, last of all the moves.
func (pl *planner) finishUsers() error {
	pl.finishing = true
	for _, p := range pl.lateSettles {
		if err := pl.settleUser(p); err != nil {
			return err
		}
		t := &pl.tr().Tasks[pl.plan.Procs[p].Task]
		if want := t.NS[pstree.PidForChildrenNS]; want != 0 && want != t.NS[pstree.PidNS] && pl.m.procs[p].pfc != want {
			if err := pl.emit(pl.pfcStep(p, want)); err != nil {
				return err
			}
		}
	}
	return nil
}
