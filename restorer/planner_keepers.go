package restorer

import (
	"errors"
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// User namespace keepers (docs/restore.md, "Helpers"). In the original
// history the members of a user namespace U may all have died after doing
// their work - created U's children and wrote their maps, cloned inits
// into pid namespaces U owns - while U lived on as a parent or an owner.
// The plan replays that work later, in its own order, and then needs a
// member of U that the image no longer has: to write the maps of a child
// of U (the kernel takes them only from a member of the parent with
// CAP_SETUID there), to clone from U, or to setns into U through it (the
// kernel joins a namespace only through something that refers to it).
//
// A keeper is a helper that is such a member for as long as the restore
// runs. The level-0 cursor writer clones it (so it is the writer's child,
// at a level-0 pid the kernel chooses above every image pid, and the writer
// reaps it like every other helper in the finish phase); then it either
// joins U through the member about to leave it (U exists: keepBeforeLeaving),
// or, when nobody made U yet, joins U's parent through a member of it (a
// keeper of its own, made first, if the parent has none either), creates U
// with unshare and has a member of the parent write U's maps (makeKeeper).
// It does nothing else, so it is what the kernel's history had: a member
// of U that outlived the work done through it.

// whyKeeper says what a keeper is for.
const whyKeeper = "member that keeps user ns %d"

// errNoUserMember is a part of the plan that needs a live member of user
// namespace u and finds none: expandAll makes a keeper between parts
// (makeKeeper) and retries, or NewPlan plans again with a keeper made
// before u's last member leaves it (keepLeft).
type errNoUserMember struct {
	u   pstree.NSID
	err error
}

func (e *errNoUserMember) Error() string { return e.err.Error() }
func (e *errNoUserMember) Unwrap() error { return e.err }

// noUserMember is the error of a step that needs a live member of user
// namespace u: what says why, and the error wraps ErrUnsupported.
func noUserMember(u pstree.NSID, format string, a ...any) error {
	return &errNoUserMember{u, fmt.Errorf(format+": %w", append(a, ErrUnsupported)...)}
}

// userMember is a live member of user namespace u, or -1.
func (pl *planner) userMember(u pstree.NSID) int {
	return pl.memberOf(pstree.UserNS, u)
}

// newKeeper adds (or, for a part of the plan that is played again, takes
// back) the keeper of user namespace u and clones it from the level-0
// cursor writer.
func (pl *planner) newKeeper(u pstree.NSID) (int, error) {
	h, ok := pl.keepers[u]
	if !ok {
		w := &pl.plan.Procs[pl.w0]
		h = pl.addHelper(Proc{Task: -1, PIDs: pl.freePIDs(w.NS), NS: w.NS, Why: fmt.Sprintf(whyKeeper, u)})
		pl.creator[h] = pl.w0
		if pl.keepers == nil {
			pl.keepers = map[pstree.NSID]int{}
		}
		pl.keepers[u] = h
	}
	if pl.m.procs[h].state != mNone {
		return -1, fmt.Errorf("user ns %d: its keeper is already used: %w", u, ErrUnsupported)
	}
	return h, pl.placed(Step{Op: OpClone, Actor: pl.w0, Target: h})
}

// makeKeeper makes a keeper of user namespace u, which nobody made yet:
// it joins u's parent through a member (made first, recursively, when the
// parent has none and was never made either), creates u and has a member
// of the parent write u's maps. It is played between parts of the plan
// (expandAll), so no rollback takes it back.
func (pl *planner) makeKeeper(u pstree.NSID) error {
	if u == 0 || pl.m.made[u] || u == pl.m.own[pstree.UserNS] {
		return fmt.Errorf("user ns %d: exists, and nobody is in it to keep it: %w", u, ErrUnsupported)
	}
	parent := pl.userParent(u)
	via := pl.userMember(parent)
	if via < 0 {
		if err := pl.makeKeeper(parent); err != nil {
			return err
		}
		via = pl.userMember(parent)
	}
	h, err := pl.newKeeper(u)
	if err != nil {
		return err
	}
	if parent != pl.m.own[pstree.UserNS] {
		if err := pl.emit(Step{Op: OpSetns, Actor: h, Target: via, NS: nsOne(pstree.UserNS, parent)}); err != nil {
			return err
		}
		if err := pl.nestedCreds(h, parent, u); err != nil {
			return err
		}
	}
	if err := pl.emit(Step{Op: OpUnshare, Actor: h, Target: -1, NS: nsOne(pstree.UserNS, u)}); err != nil {
		return err
	}
	return pl.userMap(h, u)
}

// keepBeforeLeaving makes a keeper of user namespace cur before task c,
// its last live member, leaves it, when an earlier plan found cur needed
// afterwards (keepLeft): the keeper joins cur through c.
func (pl *planner) keepBeforeLeaving(c int) error {
	cur := pl.m.procs[c].nsk[pstree.UserNS]
	if !pl.keepLeft[cur] {
		return nil
	}
	for p := range pl.m.procs {
		if q := &pl.m.procs[p]; p != c && q.state == mAlive && q.nsk[pstree.UserNS] == cur {
			return nil // another member stays
		}
	}
	h, err := pl.newKeeper(cur)
	if err != nil {
		return err
	}
	return pl.emit(Step{Op: OpSetns, Actor: h, Target: c, NS: nsOne(pstree.UserNS, cur)})
}

// keeperFor handles a part's failure err between parts: when it lacks a
// member of a user namespace nobody made yet, it makes that namespace's
// keeper and says so (the part is then played again). A namespace that
// exists but that every member left is marked for the next plan
// (keepLeft, NewPlan).
func (pl *planner) keeperFor(err error) bool {
	var need *errNoUserMember
	if !errors.As(err, &need) || pl.userMember(need.u) >= 0 {
		return false
	}
	if pl.m.made[need.u] {
		if !pl.keepLeft[need.u] {
			pl.replanKeep = append(pl.replanKeep, need.u)
		}
		return false
	}
	mark, steps := len(pl.m.undo), len(pl.plan.Steps)
	if pl.makeKeeper(need.u) != nil {
		pl.m.rollback(mark)
		pl.plan.Steps = pl.plan.Steps[:steps]
		return false
	}
	pl.m.undo = pl.m.undo[:0]
	return true
}

// needsMember is the user namespace whose missing member made err, or 0.
func needsMember(err error) pstree.NSID {
	var need *errNoUserMember
	if errors.As(err, &need) {
		return need.u
	}
	return 0
}
