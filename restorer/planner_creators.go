package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// assignCreators decides who clones each proc, and in which session each
// session leader must be born (leaderBirthSession: the session its kids need it to pass on
// before its own setsid, F4.3).
func (pl *planner) assignCreators() error {
	tr := pl.tr()
	pl.leaderBirthSession = make([]int, len(pl.plan.Procs))
	for i := range pl.leaderBirthSession {
		pl.leaderBirthSession[i] = unset
	}
	placed := map[int]bool{0: true}
	for i := 1; i < len(tr.Tasks); i++ {
		t := &tr.Tasks[i]
		p, ok := pl.byPID[t.PPID]
		if !ok || p >= i {
			return fmt.Errorf("task %d: parent %d is not an earlier task: %w", t.PID(), t.PPID, ErrBadImage)
		}
		// Helpers for the dead leaders this task needs are created by its
		// parent, before it.
		for _, l := range []int{pl.sessionLeader[i], pl.groupLeader[i]} {
			if l >= len(tr.Tasks) && !placed[l] {
				if err := pl.assign(l, p, placed); err != nil {
					return err
				}
			}
		}
		if err := pl.assign(i, p, placed); err != nil {
			return err
		}
	}
	return nil
}

const unset = -3

// claimSession says whether proc q can be in session s at some point of its life,
// claiming the birth session of a session leader that has not got one.
func (pl *planner) claimSession(q, s int) bool {
	switch {
	case q == Restorer:
		return s == ext
	case pl.sessionLeader[q] != q:
		return pl.sessionLeader[q] == s
	case s == q:
		return true
	case pl.leaderBirthSession[q] == unset:
		if !pl.claimSession(pl.creator[q], s) {
			// q is an orphan too: born in s's session, then reparented.
			p := pl.creator[q]
			if s < 0 || p < 0 || pl.sibling[q] || pl.below(s, q) {
				return false // (s cannot clone q if q creates s)
			}
			sib, ok := pl.orphanRule(q, s, p)
			if !ok {
				return false
			}
			pl.kids[p] = slices.DeleteFunc(pl.kids[p], func(k int) bool { return k == q })
			pl.kids[s] = append(pl.kids[s], q)
			pl.creator[q], pl.sibling[q] = s, sib
		}
		pl.leaderBirthSession[q] = s
		return true
	}
	return pl.leaderBirthSession[q] == s
}

// assign makes c a kid of its parent p, or, when p can never be in c's
// session, of c's session leader cloning it with CLONE_PARENT (an orphan).
func (pl *planner) assign(c, p int, placed map[int]bool) error {
	placed[c] = true
	s := pl.sessionLeader[c]
	cr := p
	if s != c && !pl.claimSession(p, s) {
		if s < 0 {
			return fmt.Errorf("%s: its session is outside the tree: %w", pl.plan.name(c), ErrUnsupported)
		}
		if !placed[s] && pl.plan.Procs[s].IsHelper() {
			if err := pl.assign(s, p, placed); err != nil {
				return err
			}
		}
		sib, ok := pl.orphanRule(c, s, p)
		cr = s
		if !ok {
			z := pl.leaver(c, s, p)
			if z < 0 && !pl.initAbove(p, c) && !pl.subreaperAbove(p, c) {
				// The kernel gives an orphan only to an init or to a
				// child subreaper (F5.2): an image without the flag
				// (dumped without eBPF), or a parent that is neither.
				return fmt.Errorf("%s: session %s is neither its parent's nor led by a sibling of it, and its parent %s is neither an init nor a child subreaper the image records: %w", pl.plan.name(c), pl.plan.name(s), pl.plan.name(p), ErrUnsupported)
			}
			if z < 0 {
				return fmt.Errorf("%s: session %s is neither its parent's nor led by a sibling of it, and no member of it can leave it to %s (in that namespace or above it for an init, below it in its namespace for a child subreaper): %w", pl.plan.name(c), pl.plan.name(s), pl.plan.name(p), ErrUnsupported)
			}
			cr = z
		}
		pl.sibling[c] = sib
	}
	if cr == p && s != c && !pl.reachesUser(p, c) {
		// The parent is in a user namespace below c's (c was born
		// through nsenter from outside and left to the init): a dying
		// member of c's session in c's namespaces clones it instead.
		if z := pl.orphanMaker(c, s, p); z >= 0 {
			cr = z
		}
	}
	pl.creator[c] = cr
	pl.kids[cr] = append(pl.kids[cr], c)
	return nil
}

// orphanRule says how session leader s can clone c so that c ends as a child
// of p: as its sibling with CLONE_PARENT (s is p's child, not an init), or
// as its own child that p, the init of their namespace, inherits when s
// exits at the end.
func (pl *planner) orphanRule(c, s, p int) (sibling, ok bool) {
	if p < 0 || s < 0 {
		return false, false
	}
	sp := pl.plan.Procs[s].PIDs
	sParent := pl.creator[s]
	if t := pl.plan.Procs[s].Task; t >= 0 {
		sParent = pl.byPID[pl.tr().Tasks[t].PPID]
	}
	switch {
	case sParent == p && !pl.sibling[s] && sp[len(sp)-1] != 1:
		return true, true
	case pl.exits(s) && pl.isInitOf(p, pl.plan.Procs[s].NS) && pl.plan.Procs[c].NS == pl.plan.Procs[s].NS:
		return false, true
	}
	return false, false
}

// orphanMaker finds a proc that can play the parent that left orphan c to
// its init p: one that exits at the end of the restore (a zombie of the
// image or a helper), is in c's session s and in c's pid namespace, whose
// init p is. It clones c in the session, and when it dies c is re-parented
// to p. This is how such an orphan usually came about: the zombie is the
// shell that started c and exited (found by TestRealTrees). -1 if none.
func (pl *planner) orphanMaker(c, s, p int) int {
	ns := pl.plan.Procs[c].NS
	if p < 0 || s < 0 || !pl.isInitOf(p, ns) {
		return -1
	}
	for z := range pl.plan.Procs {
		if z != c && z != p && pl.exits(z) && pl.sessionLeader[z] == s && pl.plan.Procs[z].NS == ns && !pl.isInitOf(z, ns) && !pl.below(z, c) {
			return z
		}
	}
	return -1
}

// reachesUser says whether proc p can clone c into c's user namespace: a
// creator can setns only into its own user namespace's descendants.
func (pl *planner) reachesUser(p, c int) bool {
	tp, tc := pl.plan.Procs[p].Task, pl.plan.Procs[c].Task
	if tp < 0 || tc < 0 {
		return true
	}
	up, uc := pl.tr().Tasks[tp].NS[pstree.UserNS], pl.tr().Tasks[tc].NS[pstree.UserNS]
	return up == 0 || uc == 0 || pl.m.capable(up, uc)
}

// below says whether proc q descends from proc a, through the image's
// parents (helpers: through their creators): a could not clone q's
// ancestor after being cloned by q.
func (pl *planner) below(q, a int) bool {
	for n := 0; q >= 0 && n <= len(pl.plan.Procs); n++ {
		if q == a {
			return true
		}
		if t := pl.plan.Procs[q].Task; t > 0 {
			q = pl.byPID[pl.tr().Tasks[t].PPID]
		} else if t < 0 {
			q = pl.creator[q]
		} else {
			return false
		}
	}
	return false
}

// birthSession is the session c must be cloned in, or unset for any.
func (pl *planner) birthSession(c int) int {
	if pl.sessionLeader[c] != c {
		return pl.sessionLeader[c]
	}
	return pl.leaderBirthSession[c]
}

// parentThread is the thread of creator cr that clones c: the image's
// parent thread when cr is c's parent and that is one of its restored
// threads (stopped payload; an agent's threads are its runtime's, not
// restored), else 0 (cr's leader).
func (pl *planner) parentThread(c, cr int) int {
	if pl.plan.Options.Payload != PayloadStopped || pl.sibling[c] || cr < 0 {
		return 0
	}
	ti, pi := pl.plan.Procs[c].Task, pl.plan.Procs[cr].Task
	for k, h := range pl.standIns {
		if h == c {
			// A stand-in is its task's parent thread's child, so that
			// the task it clones with CLONE_PARENT is too.
			ti = pl.plan.Procs[k].Task
		}
	}
	if ti < 0 || pi < 0 {
		return 0
	}
	t, p := &pl.tr().Tasks[ti], &pl.tr().Tasks[pi]
	if t.ParentTID == 0 || t.ParentTID == t.PPID || t.PPID != p.PIDs[0] || p.Agent {
		return 0
	}
	return t.ParentTID
}

// creatorCycle refuses an assignment in which a proc would (through its
// creators) create itself: the orphan rules can move a creator below its
// own kid (histories seed 615), and every later phase walks creators up
// (claimGroup recursed until the stack overflowed).
func (pl *planner) creatorCycle() error {
	for q := range pl.plan.Procs {
		c := pl.creator[q]
		for n := 0; c >= 0 && c != q && n <= len(pl.plan.Procs); n++ {
			c = pl.creator[c]
		}
		if c == q {
			return fmt.Errorf("%s: the orphan rules make it its own creator's creator: %w", pl.plan.name(q), ErrUnsupported)
		}
	}
	return nil
}
