package restorer

import (
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// Temporary helper tasks (docs/restore.md, "Helpers"). A helper is a proc
// of the plan that is no task of the image: it exists only during the
// restore and is reaped before Execute returns. Five kinds:
//
//   - the level-0 cursor writer (planner.build);
//   - a dead session or group leader, at the leader's pids, that lends its
//     ids to the members it creates (addLeaderHelpers, F4.2);
//   - a stand-in, at pids no image task needs: born of p in p's current
//     session and group, it clones p's child c with CLONE_PARENT once c's
//     namespace exists, after p itself has left them (standIn), or, when
//     c's new pid namespace is owned by a user namespace (or the parent of
//     a new one) that p is not in, from there, which it joins once it
//     exists (userStandInNS);
//   - a leaver, at pids no image task needs: it stands for a creator that
//     died and left its child c to the init of its pid namespace. It is
//     born in c's session and group, in the init's namespace (setns when
//     its own creator is outside), clones c and exits, so the kernel
//     re-parents c to the init (F5.2). This is how such an orphan comes
//     about in the first place; its real creator is gone from the image;
//   - a keeper (planner_keepers.go): a member of a user namespace whose
//     members died in the original, for as long as the plan needs one.
const whyLeaver = "creator that leaves its child to the init"

// whyStandIn: a helper that keeps its parent's session and group for a
// child the parent cannot clone yet (standIn).
const whyStandIn = "stand-in that keeps its parent's session and group"

// addHelper adds a helper proc once planning has started: every per-proc
// table of the planner and the model grows with it.
func (pl *planner) addHelper(p Proc) int {
	h := pl.addProc(p)
	if pl.leaderBirthSession != nil {
		pl.leaderBirthSession = append(pl.leaderBirthSession, unset)
	}
	if pl.requiredBirthGroup != nil {
		pl.requiredBirthGroup = append(pl.requiredBirthGroup, unset)
	}
	if pl.m != nil {
		pl.m.procs = append(pl.m.procs, mproc{})
	}
	return h
}

// leaver finds (or makes) a creator for task c, in session s, that leaves
// it to its parent p when it exits: an existing proc that exits at the end
// (orphanMaker), else a new leaver helper. -1 when there is none.
func (pl *planner) leaver(c, s, p int) int {
	if z := pl.orphanMaker(c, s, p); z >= 0 {
		return z
	}
	return pl.newLeaver(c, s, p)
}

// newLeaver adds a leaver helper that clones c in session s and leaves it
// to p: in p's pid namespace, created by a proc that is in c's session and
// in the group c must be born in. -1 when p is no init above c, or when
// nobody can be there.
func (pl *planner) newLeaver(c, s, p int) int {
	if p < 0 || s < 0 {
		return -1
	}
	under := -1 // the leaver's creator must be below p: p is a subreaper
	switch {
	case pl.initAbove(p, c):
	case pl.subreaperAbove(p, c):
		under = p
	default:
		return -1
	}
	ns := pl.plan.Procs[p].NS
	g := pl.leaverGroup(c)
	x := pl.groupCreator(c, ns, s, g, under)
	if x < 0 {
		return -1
	}
	if under >= 0 {
		pl.adopters[p] = true
	}
	h := pl.addHelper(Proc{Task: -1, PIDs: pl.freePIDs(ns), NS: ns, Why: whyLeaver})
	pl.sessionLeader[h], pl.groupLeader[h] = s, g
	pl.creator[h] = x
	pl.kids[x] = append(pl.kids[x], h)
	return h
}

// initAbove says whether p is the init of c's pid namespace or of one of
// its ancestors: the reaper of a creator of c that died in that namespace
// (c born there, or through setns below it).
func (pl *planner) initAbove(p, c int) bool {
	ns := pl.plan.Procs[p].NS
	return pl.isInitOf(p, ns) && slices.Contains(pl.m.chain(pl.plan.Procs[c].NS), ns)
}

// subreaperAbove says whether p is a child subreaper of the image (when
// the image records the flag) in c's pid namespace or one of its
// ancestors: the kernel gives it the children of a dying descendant in
// its own namespace before the init (F5.2), so a leaver cloned below it
// leaves c to it.
func (pl *planner) subreaperAbove(p, c int) bool {
	t := pl.plan.Procs[p].Task
	return t >= 0 && pl.tr().SubreapersRecorded && pl.tr().Tasks[t].ChildSubreaper &&
		slices.Contains(pl.m.chain(pl.plan.Procs[c].NS), pl.plan.Procs[p].NS)
}

// leaverGroup is the group a leaver must be in when it clones c: c's own
// when c cannot get there by itself (it can name no other leader's group
// from its namespace, F4.1), else its session leader's, which every
// member of a session can be in.
func (pl *planner) leaverGroup(c int) int {
	if pl.reachesFinalGroup(c) {
		return pl.sessionLeader[c]
	}
	return pl.groupLeader[c]
}

// reachesFinalGroup says whether q can get into its final group from any
// group of its session: it forms that group (or leads a session), the
// group's leader is in q's own namespace so q can name it in setpgid, or
// q's outer parent can move it there (F4.1).
func (pl *planner) reachesFinalGroup(q int) bool {
	g := pl.groupLeader[q]
	return g == q || pl.sessionLeader[q] == q || (g >= 0 && pl.numAt(g, q) != 0) || pl.parentMovesLater(q, g)
}

// groupCreator is a proc that can clone a leaver for c into pid namespace
// ns, in session s and group g: one that ends in s and g (so it is there
// once it has played its own part, which is when its kids are cloned),
// lives in ns or above it, and is no descendant of c; with under >= 0, a
// descendant of proc under in ns itself (the leaver then dies below that
// subreaper). g's leader first (a session leader is always in its own
// session and group).
func (pl *planner) groupCreator(c int, ns pstree.NSID, s, g, under int) int {
	ok := func(x int) bool {
		if x < 0 || under >= 0 && (!pl.below(x, under) || pl.plan.Procs[x].NS != ns) {
			return false
		}
		return x != c && pl.sessionLeader[x] == s && pl.groupLeader[x] == g && !pl.below(x, c) &&
			slices.Contains(pl.m.chain(ns), pl.plan.Procs[x].NS)
	}
	if ok(g) {
		return g
	}
	for x := range pl.plan.Procs {
		if ok(x) {
			return x
		}
	}
	return -1
}

// freePIDs gives a helper in pid namespace ns a pid at every level that no
// proc, thread, session or group of the image uses there: the smallest
// free number above 1 at each inner level (only the restore forks there),
// and 0 at level 0 - the kernel's choice, made above every image pid
// (placed parks the host cursor first).
func (pl *planner) freePIDs(ns pstree.NSID) []int {
	c := pl.m.chain(ns)
	taken := pl.numbersIn(c)
	pids := make([]int, len(c))
	for l := 1; l < len(c); l++ {
		n := 2
		for taken[nsNum{c[l], n}] {
			n++
		}
		pids[l] = n
	}
	return pids
}

// numbersIn lists every pid number the plan's procs and the image's
// threads, sessions and groups use in the namespaces of chain c.
func (pl *planner) numbersIn(c []pstree.NSID) map[nsNum]bool {
	taken := map[nsNum]bool{}
	mark := func(ns pstree.NSID, nums []int) {
		pc := pl.m.chain(ns)
		for l, n := range nums {
			if l < len(pc) && l < len(c) && pc[l] == c[l] && n != 0 {
				taken[nsNum{c[l], n}] = true
			}
		}
	}
	for i := range pl.plan.Procs {
		mark(pl.plan.Procs[i].NS, pl.plan.Procs[i].PIDs)
	}
	for i := range pl.tr().Tasks {
		t := &pl.tr().Tasks[i]
		for _, th := range t.Threads {
			mark(t.NS[pstree.PidNS], th.TIDs)
		}
		mark(t.NS[pstree.PidNS], t.SIDs)
		mark(t.NS[pstree.PidNS], t.PGIDs)
	}
	return taken
}

// leaveToParent gives task k, whose creator (its parent p, an init above
// it, or a sibling cloning it with CLONE_PARENT) cannot be in the group k
// must inherit, a leaver helper as its creator instead: the leaver is
// born in that group and leaves k to p. It says whether it did.
func (pl *planner) leaveToParent(k int) bool {
	t := pl.plan.Procs[k].Task
	if t <= 0 {
		return false
	}
	p := pl.byPID[pl.tr().Tasks[t].PPID]
	h := pl.newLeaver(k, pl.sessionLeader[k], p)
	if h < 0 {
		return false
	}
	cr := pl.creator[k]
	pl.kids[cr] = slices.DeleteFunc(pl.kids[cr], func(q int) bool { return q == k })
	pl.creator[k], pl.sibling[k] = h, false
	pl.kids[h] = append(pl.kids[h], k)
	return true
}

// leavesItsState says whether proc p is not yet in the session and group
// it ends in: it calls setsid or changes its group later in the plan.
func (pl *planner) leavesItsState(p int) bool {
	mp := &pl.m.procs[p]
	return mp.sid != pl.sessionLeader[p] || mp.pgid != pl.groupLeader[p]
}

// standIn gives p's kid c, born through setns into a namespace whose init
// does not exist yet, a stand-in helper as its creator: p clones the
// stand-in now, in p's current session and group, and the stand-in clones
// c with CLONE_PARENT (so c is p's child) once the init exists, whatever p
// has done meanwhile. This is the kernel's own order: p entered the
// namespace and cloned c before it called setsid or changed its group,
// and the init was made by p's descendants before that. A retried part
// of the plan finds the stand-in already made.
func (pl *planner) standIn(p, c int) int {
	if h, ok := pl.standIns[c]; ok {
		return h
	}
	mp := &pl.m.procs[p]
	h := pl.addHelper(Proc{Task: -1, PIDs: pl.freePIDs(mp.ns), NS: mp.ns, Why: whyStandIn})
	pl.sessionLeader[h], pl.groupLeader[h] = mp.sid, mp.pgid
	pl.creator[h] = p
	if i := slices.Index(pl.kids[p], c); i >= 0 {
		pl.kids[p][i] = h // in c's place in p's order
	} else {
		pl.kids[p] = append(pl.kids[p], h)
	}
	pl.creator[c], pl.sibling[c] = h, true
	pl.kids[h] = []int{c}
	if pl.standIns == nil {
		pl.standIns = map[int]int{}
	}
	pl.standIns[c] = h
	return h
}

// userStandInNS is the user namespace a stand-in must be in to clone step
// st's target, the init of a new pid namespace owned by user namespace O,
// when st's actor is elsewhere: O itself when O exists, else O's parent,
// where the kernel creates O in the same clone (create_user_ns: the
// creator's user namespace becomes the parent; copy_namespaces: the new pid
// namespace is owned by the child's user namespace). The kernel's history
// had a member of it clone the target with CLONE_PARENT (and
// CLONE_NEWUSER); a stand-in that joins it does the same. 0 when st needs
// none or the actor's user namespace has no capability over it.
func (pl *planner) userStandInNS(st Step) pstree.NSID {
	if !st.NewPIDNS || st.Actor == Restorer || st.Into != 0 || pl.plan.Procs[st.Target].IsHelper() {
		return 0
	}
	tr := pl.tr()
	o := tr.Namespace(pl.plan.Procs[st.Target].NS).Owner
	if o == 0 || tr.Namespace(o) == nil || tr.Namespace(o).Ambient {
		return 0
	}
	in := o
	if !pl.m.made[o] {
		if in = tr.Namespace(o).Parent; in == 0 || tr.Namespace(in).Ambient {
			in = pl.m.own[pstree.UserNS]
		}
	}
	cur := pl.m.procs[st.Actor].nsk[pstree.UserNS]
	if cur == in || cur == o || !pl.m.capable(cur, in) {
		return 0
	}
	return in
}
