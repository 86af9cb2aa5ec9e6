package restorer

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nsinit/nsinit/pstree"
)

// expand runs proc p's part of the plan: it creates p's kids around p's own
// session and group changes, then expands each kid.
func (pl *planner) expand(p int) error {
	mp := func() *mproc { return &pl.m.procs[p] }
	leadsSession := pl.sessionLeader[p] == p
	if pl.adopters[p] && !mp().subreaper {
		// A leaver below p dies in the finish phase and leaves p an
		// orphan: p is a child subreaper by then, as in the image.
		if err := pl.emit(Step{Op: OpSubreaper, Actor: p, Target: -1}); err != nil {
			return err
		}
	}
	if f := pl.finalUser(p); f == 0 || pl.m.procs[p].nsk[pstree.UserNS] == f {
		if err := pl.threads(p); err != nil {
			return err
		}
	}
	var created []int
	clone := func(c int) error {
		k, err := pl.cloneKid(p, c)
		if k >= 0 {
			created = append(created, k)
		}
		return err
	}
	if pl.visitsOwnGroup(p) && mp().pgid != p {
		// Others join p's group, which p leaves: p forms it first.
		if err := pl.setpgidTo(p, 0, p); err != nil {
			return err
		}
	}
	var leaders, phaseA, phaseB []int
	for _, c := range pl.kids[p] {
		switch bs := pl.birthSession(c); {
		case bs == unset:
			leaders = append(leaders, c)
		case leadsSession && bs == p:
			phaseB = append(phaseB, c)
		default:
			phaseA = append(phaseA, c)
		}
	}
	var later, hop []int
	cloneGroup := func(c int) int { return pl.cloneGroup(c, p) }
	for _, c := range leaders {
		// A session leader's birth group matters only to the kids it
		// clones before its setsid: those that must inherit a group p
		// has to visit first hop with the others.
		if g := cloneGroup(c); g != unset && g != mp().pgid {
			hop = append(hop, c)
			continue
		}
		if err := clone(c); err != nil {
			return err
		}
	}
	for _, c := range phaseA {
		switch g := cloneGroup(c); {
		case g == mp().pgid || (g == unset && pl.groupLeader[c] == mp().pgid):
			if err := clone(c); err != nil {
				return err
			}
		case g == unset:
			later = append(later, c)
		default:
			hop = append(hop, c)
		}
	}
	if !leadsSession && pl.groupLeader[p] == p && mp().pgid != p {
		if err := pl.setpgidTo(p, 0, p); err != nil {
			return err
		}
	}
	for _, c := range hop {
		if g := cloneGroup(c); mp().pgid != g {
			if err := pl.setpgidTo(p, 0, g); err != nil {
				return err
			}
		}
		if err := clone(c); err != nil {
			return err
		}
	}
	if g := pl.groupLeader[p]; !leadsSession && g != ext && mp().pgid != g {
		// Joining may have to wait for the group to exist: a work item
		// of its own.
		pl.joins = append(pl.joins, pl.joinOf(p, g))
	}
	for _, c := range later {
		if err := clone(c); err != nil {
			return err
		}
	}
	if leadsSession {
		if err := pl.emit(Step{Op: OpSetsid, Actor: p, Target: -1}); err != nil {
			return err
		}
		for _, c := range phaseB {
			if err := clone(c); err != nil {
				return err
			}
		}
	}
	if err := pl.settleUser(p); err != nil {
		return err
	}
	// Kids that lead a session or a group go first, so the groups others
	// join exist when they join them.
	slices.SortStableFunc(created, func(a, b int) int {
		rank := func(c int) int {
			switch {
			case pl.sessionLeader[c] == c:
				return 0
			case pl.groupLeader[c] == c:
				return 1
			}
			return 2
		}
		return rank(a) - rank(b)
	})
	pl.ready = append(created, pl.ready...)
	return nil
}

// threads creates task p's threads (stopped payload), once.
func (pl *planner) threads(p int) error {
	if pl.plan.Options.Payload != PayloadStopped || pl.plan.Procs[p].IsHelper() || len(pl.m.procs[p].threads) > 0 {
		return nil
	}
	t := &pl.tr().Tasks[pl.plan.Procs[p].Task]
	// An agent's threads belong to its Go runtime, not to the image.
	if t.State == pstree.Zombie || t.Agent {
		return nil
	}
	for _, th := range t.Threads {
		if err := pl.placed(Step{Op: OpThread, Actor: p, Target: -1, PIDs: th.TIDs}); err != nil {
			return err
		}
	}
	return nil
}

// cloneKid plays p's clone of its kid c and returns the proc it created:
// c, or a stand-in that clones c later, or -1 when c waits for its
// namespace's init (deferred).
func (pl *planner) cloneKid(p, c int) (int, error) {
	if err := pl.stageUser(p, pl.userNeed(p, c)); err != nil {
		return -1, err
	}
	if pl.parentThread(c, p) != 0 {
		// a thread forks c: p is in its image user namespace by then
		if err := pl.settleUser(p); err != nil {
			return -1, err
		}
	}
	st := pl.cloneStep(c)
	if pids := pl.plan.Procs[c].PIDs; st.Into != 0 && pids[len(pids)-1] == 1 {
		// The kernel allows it (setns to another task's
		// pid_for_children made by its unshare, then fork: pid 1 of a
		// namespace nobody was in); neither the model nor the builders
		// enter a namespace through a pid_for_children link yet.
		return -1, fmt.Errorf("%s: the init of pid ns %d, born through setns into it from another pid namespace (another task's unshare made it): %w", pl.plan.name(c), st.Into, ErrUnsupported)
	}
	if st.Into != 0 && pl.m.nss[st.Into].init < 0 {
		// born via setns into a namespace whose init a later part of
		// the plan creates: clone it then, when p is in its final
		// state - or, if p leaves the session or group c is to be
		// born in before then, by a stand-in born in them now.
		if pl.sessionLeader[c] == c || !pl.leavesItsState(p) {
			pl.deferred = append(pl.deferred, c)
			return -1, nil
		}
		c = pl.standIn(p, c)
		st = pl.cloneStep(c)
	}
	if userNS := pl.userStandInNS(st); userNS != 0 {
		if h, ok := pl.standIns[c]; !ok || h != p {
			// A stand-in born now, in p's session and group, clones c
			// later from that user namespace.
			c = pl.standIn(p, c)
			st = pl.cloneStep(c)
		} else {
			// p is c's stand-in: it enters that user namespace
			// first, once a member makes it (until then its part
			// waits).
			via := pl.userMember(userNS)
			if via < 0 {
				return -1, noUserMember(userNS, "%s: user ns %d, where it must clone %s, has no live member yet", pl.plan.name(p), userNS, pl.plan.name(c))
			}
			if err := pl.emit(Step{Op: OpSetns, Actor: p, Target: via, NS: nsOne(pstree.UserNS, userNS)}); err != nil {
				return -1, err
			}
		}
	}
	if err := pl.placeClone(st); err != nil {
		return -1, err
	}
	return c, pl.afterBirth(p, c)
}

// afterBirth plays what follows p's clone of c at once, before c does
// anything: c forms its own group early, or its outer parent p moves it
// into a group c cannot name (F4.1). A deferred clone (one that waited
// for its namespace's init) needs the same as an immediate one.
func (pl *planner) afterBirth(p, c int) error {
	if pl.earlyGroup(c) {
		return pl.setpgidTo(c, 0, c)
	}
	g := pl.requiredBirthGroup[c]
	if g == unset {
		g = pl.groupLeader[c]
		if g == c || g == ext || pl.sessionLeader[c] == c || pl.numAt(g, c) != 0 {
			return nil
		}
	}
	if pl.m.procs[c].pgid != g && pl.outerMove(c, p, g) {
		mark, steps := len(pl.m.undo), len(pl.plan.Steps)
		if pl.setpgidTo(p, c, g) != nil {
			// g does not exist yet (a later part of the plan forms
			// it): c does nothing until p has moved it there.
			pl.m.rollback(mark)
			pl.plan.Steps = pl.plan.Steps[:steps]
			pl.joins = append(pl.joins, join{p, c, g})
			pl.moving[c] = true
		}
	}
	return nil
}

// expandAll expands procs depth first. A proc whose part cannot be played
// yet (typically: it joins a group whose leader is expanded later) is
// rolled back in the model and retried after the others; the plan fails
// only when no proc can make progress.
func (pl *planner) expandAll() error {
	pl.ready = []int{0}
	pl.moving = map[int]bool{}
	pl.m.journal = true
	defer func() { pl.m.journal = false }()
	for len(pl.ready) > 0 || len(pl.joins) > 0 || len(pl.deferred) > 0 {
		var firstErr error
		progressed := false
		for i, c := range pl.deferred {
			if pl.m.nss[pl.plan.Procs[c].NS].init < 0 {
				continue
			}
			mark, steps := len(pl.m.undo), len(pl.plan.Steps)
			if err := pl.placeDeferred(c); err != nil {
				pl.m.rollback(mark)
				pl.plan.Steps = pl.plan.Steps[:steps]
				continue
			}
			pl.deferred = slices.Delete(pl.deferred, i, i+1)
			pl.ready = append([]int{c}, pl.ready...)
			progressed = true
			break
		}
		if progressed {
			pl.m.undo = pl.m.undo[:0]
			continue
		}
		for i, j := range pl.joins {
			if pl.holdsGroup(j) {
				continue
			}
			mark, steps := len(pl.m.undo), len(pl.plan.Steps)
			if err := pl.setpgidTo(j.actor, j.target, j.g); err != nil {
				pl.m.rollback(mark)
				pl.plan.Steps = pl.plan.Steps[:steps]
				continue
			}
			pl.joins = slices.Delete(pl.joins, i, i+1)
			delete(pl.moving, j.target)
			progressed = true
			break
		}
		if progressed {
			pl.m.undo = pl.m.undo[:0]
			continue
		}
		for i, p := range pl.ready {
			if pl.moving[p] {
				continue
			}
			mark, steps := len(pl.m.undo), len(pl.plan.Steps)
			rest := append(slices.Clone(pl.ready[:i]), pl.ready[i+1:]...)
			pl.ready = nil
			err := pl.expand(p)
			if err == nil {
				pl.ready = append(pl.ready, rest...)
				progressed = true
				break
			}
			pl.m.rollback(mark)
			pl.plan.Steps = pl.plan.Steps[:steps]
			pl.ready = append(rest[:i:i], append([]int{p}, rest[i:]...)...)
			if pl.keeperFor(err) {
				// it lacked a member of a user namespace nobody
				// made yet: a keeper made it; play the part again
				progressed = true
				break
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		if !progressed {
			if firstErr == nil && len(pl.joins) > 0 {
				j := pl.joins[0]
				firstErr = pl.setpgidTo(j.actor, j.target, j.g)
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("no progress (%s): %w", pl.waiting(), ErrUnsupported)
			}
			return firstErr
		}
		pl.m.undo = pl.m.undo[:0]
	}
	return nil
}

// placeDeferred clones c, which waited for its namespace's init, and plays
// what follows its birth.
func (pl *planner) placeDeferred(c int) error {
	if err := pl.placeClone(pl.cloneStep(c)); err != nil {
		return err
	}
	return pl.afterBirth(pl.creator[c], c)
}

// waiting names what the procs left waited for when planning stopped
// making progress, for the error.
func (pl *planner) waiting() string {
	var why []string
	for _, c := range pl.deferred {
		why = append(why, fmt.Sprintf("%s waits for the init of pid ns %d", pl.plan.name(c), pl.plan.Procs[c].NS))
	}
	for _, j := range pl.joins {
		if pl.holdsGroup(j) {
			why = append(why, fmt.Sprintf("%s keeps its group until its members are in", pl.plan.name(j.actor)))
		}
	}
	if len(why) == 0 {
		return "nothing left waits"
	}
	return strings.Join(why, "; ")
}
