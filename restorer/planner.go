package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// NewPlan turns an image into a plan. It is pure: it reads only tr and opt,
// and it replays every step in the kernel model as it goes, so a plan it
// returns reproduces the tree in the model (checked at the end) and an image
// it cannot reproduce is an error wrapping ErrBadImage or ErrUnsupported.
//
// The order follows docs/kernel.md F4.3: a task creates, in this order, the
// children that lead their own session, the children that inherit its
// current group, (it forms its own group), the children that inherit
// another group (it visits that group), the children that fix their group
// themselves; then, if it leads a session, it calls setsid and creates the
// children of its new session. Dead session and group leaders are played
// by helpers at their pid that exit at the end (F4.2); tasks whose session
// their parent never had (orphans) are created by their session leader
// with CLONE_PARENT (F2.7).
func NewPlan(tr *pstree.Tree, opt Options) (*Plan, error) {
	// The one validator of images (one validator between bytes and the model): whatever passes it has
	// the shape the planner relies on, so bad input is an error, never a
	// panic. What only planning can find is ErrUnsupported below.
	if err := pstree.Validate(tr); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	if err := checkPayload(tr, opt); err != nil {
		return nil, err
	}
	if err := checkKernel(tr, opt.Features); err != nil {
		return nil, err
	}
	if err := checkRoots(tr, opt); err != nil {
		return nil, err
	}
	if err := checkHostPIDsAny(tr, opt); err != nil { // hostpids.go
		return nil, err
	}
	keepLeft := map[pstree.NSID]bool{}
	for {
		pl := &planner{
			plan:     &Plan{Tree: tr, Options: opt},
			byPID:    map[int]int{},
			leader:   map[int]int{},
			kids:     map[int][]int{},
			starts:   map[int]pstree.NSID{},
			adopters: map[int]bool{},
			keepLeft: keepLeft,
		}
		err := pl.build()
		if err == nil {
			return pl.plan, nil
		}
		// A user namespace every member left before the plan needed it
		// again: plan again with a keeper made before its last member
		// leaves (planner_keepers.go). Each round adds one at least, so
		// this ends.
		more := false
		for _, u := range append(pl.replanKeep, needsMember(err)) {
			if u != 0 && !keepLeft[u] {
				keepLeft[u], more = true, true
			}
		}
		if !more {
			return nil, err
		}
	}
}

// checkPayload refuses what only the chosen payload makes impossible, so
// that Execute never finds it after a plan was printed: a task the exec
// payload runs (any but a zombie) needs an executable.
func checkPayload(tr *pstree.Tree, opt Options) error {
	if opt.Payload != PayloadExec {
		return nil
	}
	for i := range tr.Tasks {
		if t := &tr.Tasks[i]; t.State != pstree.Zombie && t.Exe == "" {
			return fmt.Errorf("task %d (pid %d): no executable recorded for the exec payload: %w", i, t.PID(), ErrBadImage)
		}
	}
	return nil
}

// checkRoots refuses, with the exec payload, a task whose root directory
// was not the dumper's (a container's filesystem) unless Options say where
// it runs now: its Exe and Cwd are paths in that root.
func checkRoots(tr *pstree.Tree, opt Options) error {
	if opt.Payload != PayloadExec || opt.Root != "" || opt.HostMounts {
		return nil
	}
	for i := range tr.Tasks {
		if t := &tr.Tasks[i]; t.State != pstree.Zombie && t.RootElsewhere && !t.Agent {
			mounts := ""
			if ns := tr.Namespace(t.NS[pstree.MntNS]); ns != nil && len(ns.Mounts) > 0 {
				mounts = fmt.Sprintf(" with the %d recorded mounts of its mount namespace", len(ns.Mounts))
			}
			return fmt.Errorf("task %d (pid %d) ran in another root directory (a container's filesystem; %s is a path in it): restore with --root DIR to run it in that filesystem%s, or --mounts host to run this machine's: %w",
				i, t.PID(), t.Exe, mounts, ErrUnsupported)
		}
	}
	return nil
}

type planner struct {
	w0    int // the level-0 cursor writer
	park  int // where the host cursor waits between clones
	plan  *Plan
	m     *model
	byPID map[int]int // level-0 pid -> task index (= proc index)
	// leader maps a level-0 sid/pgid number to the proc that plays it (a
	// task or a helper); ext for the root's inherited session/group.
	leader  map[int]int
	creator []int         // proc -> the proc that clones it (Restorer for the root)
	sibling []bool        // cloned with CLONE_PARENT
	kids    map[int][]int // creator -> procs it clones, image order
	// sessionLeader and groupLeader: the proc that leads each proc's
	// session and group in the image (ext: the root's inherited one).
	sessionLeader []int
	groupLeader   []int
	// leaderBirthSession: the session a session leader must be born in,
	// to pass it on to kids it clones before its own setsid (F4.3).
	leaderBirthSession []int
	// requiredBirthGroup: the group a proc must be born in (or moved to by
	// its outer parent at birth) because a kid must inherit it.
	requiredBirthGroup []int
	ready              []int                // created procs whose part is still to plan
	joins              []join               // group moves still to plan (waiting for their group)
	moving             map[int]bool         // procs waiting for their outer parent to move them
	deferred           []int                // setns-born procs waiting for their namespace's init
	standIns           map[int]int          // task -> the stand-in helper that clones it
	starts             map[int]pstree.NSID  // task -> its startUser (memo)
	lateSettles        []int                // inits that go down to their user ns in finish (lostOwner)
	keepers            map[pstree.NSID]int  // user ns -> its keeper helper (planner_keepers.go)
	keepLeft           map[pstree.NSID]bool // user ns to keep before their last member leaves
	replanKeep         []pstree.NSID        // user ns this plan found left when needed
	adopters           map[int]bool         // child subreapers a leaver dies below (OpSubreaper at their start)
	finishing          bool
}

func (pl *planner) tr() *pstree.Tree { return pl.plan.Tree }

func (pl *planner) addProc(p Proc) int {
	pl.plan.Procs = append(pl.plan.Procs, p)
	pl.creator = append(pl.creator, Restorer)
	pl.sibling = append(pl.sibling, false)
	pl.sessionLeader = append(pl.sessionLeader, ext)
	pl.groupLeader = append(pl.groupLeader, ext)
	return len(pl.plan.Procs) - 1
}

func (pl *planner) emit(s Step) error {
	pl.plan.Steps = append(pl.plan.Steps, s)
	i := len(pl.plan.Steps) - 1
	if err := pl.m.apply(pl.plan, i); err != nil {
		return fmt.Errorf("step %d (%s by %s): %w: %w", i, pl.plan.describe(&pl.plan.Steps[i]),
			pl.plan.name(s.Actor), ErrUnsupported, err)
	}
	return nil
}

func (pl *planner) build() error {
	tr := pl.tr()
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		pl.addProc(Proc{Task: i, PIDs: t.PIDs, NS: t.NS[pstree.PidNS]})
		pl.byPID[t.PID()] = i
		pl.leader[t.PID()] = i
	}
	root := &tr.Tasks[0]
	if root.SIDs[0] != root.PID() {
		pl.leader[root.SIDs[0]] = ext
	}
	if root.PGIDs[0] != root.PID() {
		pl.leader[root.PGIDs[0]] = ext
	}
	// The model must exist before helpers are known only for its size;
	// collect helpers first.
	if err := pl.addLeaderHelpers(); err != nil {
		return err
	}
	// The level-0 cursor writer: a helper in the restorer's namespace that
	// writes the host's ns_last_pid right before each clone needing it and
	// clones the root as its sibling (CLONE_PARENT: the root's parent is
	// the restorer). The host cursor is raced for by every process on the
	// machine, the restorer's own Go runtime threads included, so it is
	// written by a process that runs no Go runtime, as close to the clone
	// as possible; verification catches the rest (ErrHostRace).
	pl.w0 = pl.addProc(Proc{Task: -1, PIDs: []int{0}, NS: nsAt(tr, root.NS[pstree.PidNS], 0), Why: "level-0 cursor writer"})
	pl.plan.HostWriter = pl.w0
	for i := range pl.plan.Procs {
		pl.park = max(pl.park, pl.plan.Procs[i].PIDs[0])
	}
	for i := range tr.Tasks {
		for _, th := range tr.Tasks[i].Threads {
			pl.park = max(pl.park, th.TIDs[0])
		}
	}
	pl.m = newModel(tr, len(pl.plan.Procs)).kernelHostPIDs(pl.plan.Options.HostPIDsAny)
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		pl.sessionLeader[i] = pl.leader[t.SIDs[0]]
		pl.groupLeader[i] = pl.leader[t.PGIDs[0]]
	}
	if err := pl.assignCreators(); err != nil {
		return err
	}
	if err := pl.creatorCycle(); err != nil {
		return err
	}
	if err := pl.birthGroups(); err != nil {
		return err
	}
	if err := pl.emit(Step{Op: OpClone, Actor: Restorer, Target: pl.w0}); err != nil {
		return err
	}
	pl.creator[0], pl.sibling[0] = pl.w0, true
	if err := pl.placed(Step{Op: OpClone, Actor: pl.w0, Target: 0, AsSibling: true, NewPIDNS: root.InnerPID() == 1 && root.Level() > 0}); err != nil {
		return err
	}
	if err := pl.expandAll(); err != nil {
		return err
	}
	for p := range pl.plan.Procs {
		if pl.m.procs[p].state == mNone {
			return fmt.Errorf("%s is never created: %w", pl.plan.name(p), ErrUnsupported)
		}
	}
	if err := pl.finish(); err != nil {
		return err
	}
	procOf := make([]int, len(tr.Tasks))
	for i := range procOf {
		procOf[i] = i
	}
	if err := pl.m.compare(pl.plan, procOf); err != nil {
		return fmt.Errorf("plan does not reproduce the image: %w: %w", ErrUnsupported, err)
	}
	return nil
}

// addLeaderHelpers creates a helper for every dead session or group leader
// (a sid/pgid that no task has), at the leader's pid at every level it had.
func (pl *planner) addLeaderHelpers() error {
	tr := pl.tr()
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		for _, ids := range [][]int{t.SIDs, t.PGIDs} {
			if _, ok := pl.leader[ids[0]]; ok {
				continue
			}
			k := len(ids) - 1
			for k > 0 && ids[k] == 0 {
				k--
			}
			why := "dead group leader"
			if ids[0] == t.SIDs[0] {
				why = "dead session leader"
			}
			h := pl.addProc(Proc{Task: -1, PIDs: slices.Clone(ids[:k+1]), NS: nsAt(tr, t.NS[pstree.PidNS], k), Why: why})
			pl.leader[ids[0]] = h
		}
	}
	// Helpers' own targets: a dead session leader leads its session and
	// group; a dead group leader is in its members' session.
	for h := len(tr.Tasks); h < len(pl.plan.Procs); h++ {
		pl.sessionLeader[h], pl.groupLeader[h] = h, h
		if pl.plan.Procs[h].Why == "dead group leader" {
			for i := range tr.Tasks {
				if pl.leader[tr.Tasks[i].PGIDs[0]] == h {
					pl.sessionLeader[h] = pl.leader[tr.Tasks[i].SIDs[0]]
					break
				}
			}
		}
	}
	return nil
}

// nsAt is the ancestor of pid namespace ns at level l.
func nsAt(tr *pstree.Tree, ns pstree.NSID, l int) pstree.NSID {
	for n := tr.Namespace(ns); n != nil; n = tr.Namespace(n.Parent) {
		if n.Level == l {
			return n.ID
		}
	}
	return 0
}

// exits says whether proc p terminates at the end of the restore (a helper
// or a zombie of the image).
func (pl *planner) exits(p int) bool {
	t := pl.plan.Procs[p].Task
	return t < 0 || pl.tr().Tasks[t].State == pstree.Zombie
}

// isInitOf says whether p is the init of pid namespace ns.
func (pl *planner) isInitOf(p int, ns pstree.NSID) bool {
	pr := &pl.plan.Procs[p]
	return pr.NS == ns && pr.PIDs[len(pr.PIDs)-1] == 1 && len(pr.PIDs) > 1
}

// level of proc p.
func (pl *planner) level(p int) int { return len(pl.plan.Procs[p].PIDs) - 1 }

// numAt is leader's number as seen by proc p (0 if invisible).
// It reads the plan's procs, not the model, so it works before leader is
// created.
func (pl *planner) numAt(leader, p int) int {
	if leader < 0 {
		return 0
	}
	c := pl.m.chain(pl.plan.Procs[p].NS)
	lc := pl.m.chain(pl.plan.Procs[leader].NS)
	l := len(c) - 1
	if l >= len(lc) || lc[l] != c[l] {
		return 0
	}
	return pl.plan.Procs[leader].PIDs[l]
}
