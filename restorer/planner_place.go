package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// cloneStep builds the clone of c by its creator.
func (pl *planner) cloneStep(c int) Step {
	cr := pl.creator[c]
	pr := &pl.plan.Procs[c]
	s := Step{Op: OpClone, Actor: cr, Target: c, AsSibling: pl.sibling[c], Thread: pl.parentThread(c, cr)}
	crNS := pl.m.procs[cr].ns
	switch {
	case pr.NS == crNS:
	case pl.m.nss[pr.NS] != nil && pl.m.nss[pr.NS].parent == crNS && pr.PIDs[len(pr.PIDs)-1] == 1:
		s.NewPIDNS = true
	default:
		s.Into = pr.NS // born via setns
	}
	return s
}

// placeClone emits clone step s. A clone born via setns (s.Into) goes
// back to its creator's pid namespace afterwards, and setns(CLONE_NEWPID)
// needs CAP_SYS_ADMIN over that namespace's owner: a creator inside a user
// namespace of its own has none over the host's (`unshare -U -p` without
// -f: its first child is the new namespace's init, its later ones are born
// there too). Such a creator sets its pid_for_children for good, as the
// original did, and its clones land there without a setns.
func (pl *planner) placeClone(s Step) error {
	if s.Into == 0 || s.Actor == Restorer {
		return pl.placed(s)
	}
	a := &pl.m.procs[s.Actor]
	if o := pl.m.nss[a.ns].owner; o == 0 || pl.m.capable(a.nsk[pstree.UserNS], o) {
		return pl.placed(s)
	}
	if a.pfc == 0 {
		via := pl.m.nss[s.Into].init
		if err := pl.emit(Step{Op: OpSetPFC, Actor: s.Actor, Target: via, Into: s.Into}); err != nil {
			return err
		}
	}
	s.Into = 0
	return pl.placed(s)
}

// placed emits a clone or thread step preceded by the cursor writes that
// give its pids at the levels set_tid does not set: the init of each such
// namespace (the restorer for level 0) writes pid-1 to its ns_last_pid,
// innermost first, so the host's cursor - the one unrelated processes race
// for - is written last, right before the clone.
func (pl *planner) placed(s Step) error {
	if s.Op == OpClone && s.Actor != Restorer && pl.plan.Procs[s.Target].PIDs[0] == 0 && !pl.plan.Options.HostPIDsAny {
		// A helper whose level-0 pid the kernel chooses from the host
		// cursor: point the cursor above every level-0 pid of the image
		// first, so the helper cannot take one still to be created.
		if err := pl.emit(Step{Op: OpLastPID, Actor: pl.w0, Target: -1, Arg: pl.park}); err != nil {
			return err
		}
	}
	if s.Op == OpClone && s.NewPIDNS && s.Actor != Restorer {
		u, err := pl.ownerFirst(&s)
		if err != nil {
			return err
		}
		if u != 0 {
			return pl.placedNewUser(s, u)
		}
	}
	return pl.placedAs(s)
}

// placedNewUser emits clone step s with CLONE_NEWUSER creating user
// namespace u, its target's pid namespace's owner, then u's maps, written
// by a member of its parent (the creator's) user namespace, before the
// target does anything.
func (pl *planner) placedNewUser(s Step, u pstree.NSID) error {
	a := &pl.m.procs[s.Actor]
	if cur := a.nsk[pstree.UserNS]; cur != pl.m.own[pstree.UserNS] && a.credsIn != cur {
		if err := pl.nestedCreds(s.Actor, cur, u); err != nil {
			return err
		}
	}
	s.NS = nsOne(pstree.UserNS, u)
	return pl.placedAs(s)
}

func (pl *planner) placedAs(s Step) error {
	var pids []int
	var ns pstree.NSID
	if s.Op == OpClone {
		pids, ns = pl.plan.Procs[s.Target].PIDs, pl.plan.Procs[s.Target].NS
	} else {
		pids, ns = s.PIDs, pl.m.procs[s.Actor].ns
	}
	c := pl.m.chain(ns)
	top := len(pids) - 1
	// set_tid sets levels from..top: the innermost only, or every level
	// (MultiLevelSetTID) down to the first one the actor has no
	// CAP_CHECKPOINT_RESTORE over (a builder inside a user namespace has
	// none over the levels its ancestors' namespaces own) or that the
	// kernel chooses (0); cursors give the levels above.
	from := len(pids)
	if pl.plan.Options.Placement == PlaceSetTID {
		lowest := top
		if pl.plan.Options.Features.MultiLevelSetTID {
			lowest = 0
		}
		lowest = max(lowest, pl.firstPlaced()) // hostpids.go
		user := pl.m.procs[s.Actor].nsk[pstree.UserNS]
		for l := top; l >= lowest && pids[l] != 0; l-- {
			if o := pl.m.nss[c[l]].owner; !(l == top && s.NewPIDNS) && o != 0 && !pl.m.capable(user, o) {
				break
			}
			from = l
		}
	}
	s.SetTID, s.SetFrom = from < len(pids), from
	top = from - 1
	if s.NewPIDNS && from == len(pids) {
		top-- // pid 1 of a fresh namespace needs nothing
	}
	hostCursor, hw := false, pl.w0
	for l := top; l >= pl.firstPlaced(); l-- {
		if pids[l] == 0 {
			continue
		}
		w, err := pl.writer(c[l])
		if err != nil {
			return err
		}
		if l == 0 && pl.writesHostCursor(s.Actor, c[0]) {
			// No hand-over between the write and the clone: on a loaded
			// machine the cloner may wait milliseconds for a CPU after
			// the writer's write, and every fork meanwhile takes the pid.
			w, hw = s.Actor, s.Actor
		}
		if err := pl.emit(Step{Op: OpLastPID, Actor: w, Target: -1, Arg: pids[l] - 1}); err != nil {
			return err
		}
		hostCursor = hostCursor || l == 0
	}
	if err := pl.emit(s); err != nil {
		return err
	}
	if hostCursor {
		// Park the host cursor above every level-0 pid of the image at
		// once: while it points among them, every unrelated fork on the
		// machine takes one of them. (Execute puts the host's own value
		// back at the end.)
		// The same step checks the clone's level-0 pid (Target): a fork
		// that took it between the cursor write and the clone put the
		// proc at another pid, and the steps after this one name it by
		// its number (setpgid, the /proc files of its user namespace
		// maps): they must not run on a pid that is not ours.
		park := Step{Op: OpLastPID, Actor: hw, Target: -1, Arg: pl.park}
		if s.Op == OpClone {
			park.Target = s.Target
		}
		if err := pl.emit(park); err != nil {
			return err
		}
	}
	if s.Op == OpClone {
		if u := s.NS[pstree.UserNS]; u != 0 {
			if err := pl.userMap(s.Target, u); err != nil {
				return err
			}
		}
		return pl.memberships(s.Target)
	}
	return nil
}

// ownerFirst decides how the init that clone step s creates gets a pid
// namespace owned by the image's owner O: the kernel makes the creator's
// user namespace (after any CLONE_NEWUSER of the same call) the owner. A
// creator already in O clones it plainly. A creator in O's parent, with O
// not created yet, clones it with CLONE_NEWUSER|CLONE_NEWPID (O's first
// member is the init; bubblewrap's and runc's shape, and a tree dumped
// from the init of `unshare -U -p -f`): it keeps its own user namespace,
// and with it CAP_CHECKPOINT_RESTORE over the outer levels' owners, so
// set_tid still sets them. It returns O in that case, else 0 (the model
// refuses what is left, naming the owners).
func (pl *planner) ownerFirst(s *Step) (pstree.NSID, error) {
	tr := pl.tr()
	pr := &pl.plan.Procs[s.Target]
	o := tr.Namespace(pr.NS).Owner
	if o == 0 || tr.Namespace(o) == nil || tr.Namespace(o).Ambient || pl.m.made[o] {
		return 0, nil
	}
	cur := pl.m.procs[s.Actor].nsk[pstree.UserNS]
	if cur == o {
		return 0, nil
	}
	parent := tr.Namespace(o).Parent
	if parent == 0 || tr.Namespace(parent).Ambient {
		parent = pl.m.own[pstree.UserNS]
	}
	if parent != cur || s.Into != 0 {
		return 0, nil
	}
	// The init's own user namespace must be O or below it: a task cannot
	// leave a user namespace upwards.
	if t := pr.Task; t >= 0 {
		if want := tr.Tasks[t].NS[pstree.UserNS]; want != 0 && want != o && !pl.m.capable(o, want) {
			return 0, nil
		}
	}
	return o, nil
}

// ParkHostCursor as the Arg of an OpLastPID puts the host's ns_last_pid back
// to the value it had when the restore started.
const ParkHostCursor = -1

// writer is the proc that writes pid namespace ns's cursor: its init, or
// the restorer for the image's level 0.
func (pl *planner) writer(ns pstree.NSID) (int, error) {
	if n := pl.m.nss[ns]; n != nil && n.level == 0 {
		return pl.w0, nil
	}
	if n := pl.m.nss[ns]; n != nil && n.init >= 0 {
		if w := pl.capableMember(ns); w >= 0 {
			return w, nil
		}
		return n.init, nil // the model refuses it, naming the owner
	}
	return 0, fmt.Errorf("pid ns %d has no init to write its ns_last_pid: %w", ns, ErrUnsupported)
}

// capableMember is a proc that may write pid namespace ns's cursor (a live
// member running restorer code with capability over its owner, F8.3): its
// init if it may, else another (the init may have gone down to a user
// namespace without it); -1 if none.
func (pl *planner) capableMember(ns pstree.NSID) int {
	n := pl.m.nss[ns]
	ok := func(p int) bool {
		q := &pl.m.procs[p]
		return q.state == mAlive && !q.payload && q.ns == ns && (n.owner == 0 || pl.m.capable(q.nsk[pstree.UserNS], n.owner))
	}
	if n.init >= 0 && ok(n.init) {
		return n.init
	}
	for p := range pl.m.procs {
		if ok(p) {
			return p
		}
	}
	return -1
}

// writesHostCursor says whether actor, about to clone, may write the host
// (level-0) cursor itself: it is in level-0 pid namespace ns0 and capable
// over its owner (a builder that entered a user namespace is not).
func (pl *planner) writesHostCursor(actor int, ns0 pstree.NSID) bool {
	if actor < 0 {
		return false
	}
	a := &pl.m.procs[actor]
	if a.ns != ns0 {
		return false
	}
	o := pl.m.nss[ns0].owner
	return o == 0 || pl.m.capable(a.nsk[pstree.UserNS], o)
}
