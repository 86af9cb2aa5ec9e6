package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/internal/agentconn"
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
	pl := &planner{
		plan:   &Plan{Tree: tr, Options: opt},
		byPID:  map[int]int{},
		leader: map[int]int{},
		kids:   map[int][]int{},
	}
	if err := pl.build(); err != nil {
		return nil, err
	}
	return pl.plan, nil
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

// join is a setpgid still to plan: actor moves target (0: itself) into g.
type join struct{ actor, target, g int }

type planner struct {
	w0    int // the level-0 cursor writer
	park  int // where the host cursor waits between clones
	plan  *Plan
	m     *model
	byPID map[int]int // level-0 pid -> task index (= proc index)
	// leader maps a level-0 sid/pgid number to the proc that plays it (a
	// task or a helper); ext for the root's inherited session/group.
	leader   map[int]int
	creator  []int         // proc -> the proc that clones it (Restorer for the root)
	sibling  []bool        // cloned with CLONE_PARENT
	kids     map[int][]int // creator -> procs it clones, image order
	tsid     []int         // target session leader proc (or ext)
	tpgid    []int         // target group leader proc (or ext)
	rb       []int         // required birth session of a session leader
	bg       []int         // required birth group (one it cannot name itself)
	ready    []int         // created procs whose part is still to plan
	joins    []join        // group moves still to plan (waiting for their group)
	moving   map[int]bool  // procs waiting for their outer parent to move them
	deferred []int         // setns-born procs waiting for their namespace's init
	standIns map[int]int   // task -> the stand-in helper that clones it
}

func (pl *planner) tr() *pstree.Tree { return pl.plan.Tree }

func (pl *planner) addProc(p Proc) int {
	pl.plan.Procs = append(pl.plan.Procs, p)
	pl.creator = append(pl.creator, Restorer)
	pl.sibling = append(pl.sibling, false)
	pl.tsid = append(pl.tsid, ext)
	pl.tpgid = append(pl.tpgid, ext)
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
	pl.m = newModel(tr, len(pl.plan.Procs))
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		pl.tsid[i] = pl.leader[t.SIDs[0]]
		pl.tpgid[i] = pl.leader[t.PGIDs[0]]
	}
	if err := pl.assignCreators(); err != nil {
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
		pl.tsid[h], pl.tpgid[h] = h, h
		if pl.plan.Procs[h].Why == "dead group leader" {
			for i := range tr.Tasks {
				if pl.leader[tr.Tasks[i].PGIDs[0]] == h {
					pl.tsid[h] = pl.leader[tr.Tasks[i].SIDs[0]]
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

// assignCreators decides who clones each proc, and in which session each
// session leader must be born (rb: the session its kids need it to pass on
// before its own setsid, F4.3).
func (pl *planner) assignCreators() error {
	tr := pl.tr()
	pl.rb = make([]int, len(pl.plan.Procs))
	for i := range pl.rb {
		pl.rb[i] = unset
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
		for _, l := range []int{pl.tsid[i], pl.tpgid[i]} {
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

// need says whether proc q can be in session s at some point of its life,
// claiming the birth session of a session leader that has not got one.
func (pl *planner) need(q, s int) bool {
	switch {
	case q == Restorer:
		return s == ext
	case pl.tsid[q] != q:
		return pl.tsid[q] == s
	case s == q:
		return true
	case pl.rb[q] == unset:
		if !pl.need(pl.creator[q], s) {
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
		pl.rb[q] = s
		return true
	}
	return pl.rb[q] == s
}

// assign makes c a kid of its parent p, or, when p can never be in c's
// session, of c's session leader cloning it with CLONE_PARENT (an orphan).
func (pl *planner) assign(c, p int, placed map[int]bool) error {
	placed[c] = true
	s := pl.tsid[c]
	cr := p
	if s != c && !pl.need(p, s) {
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
			if z < 0 && !pl.initAbove(p, c) {
				// The kernel gives an orphan only to an init or to a
				// child subreaper (F5.2), and images do not record the
				// subreaper flag yet.
				return fmt.Errorf("%s: session %s is neither its parent's nor led by a sibling of it, and its parent %s is no init: adopted by a child subreaper, which is not restored yet: %w", pl.plan.name(c), pl.plan.name(s), pl.plan.name(p), ErrUnsupported)
			}
			if z < 0 {
				return fmt.Errorf("%s: session %s is neither its parent's nor led by a sibling of it, and no member of it in its init's namespace or above can leave it to that init: %w", pl.plan.name(c), pl.plan.name(s), ErrUnsupported)
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

// mustInherit says whether kid k of creator p can get into its group only
// by inheriting it from p: it cannot name the group, and p cannot move it
// there from an outer namespace.
func (pl *planner) mustInherit(k, p int) bool {
	g := pl.tpgid[k]
	if g == k || g == ext || pl.tsid[k] == k || pl.numAt(g, k) != 0 {
		return false
	}
	return !pl.outerMove(k, p, g)
}

// outerMove says whether p can setpgid its new child k into group g
// (F4.1: only an outer parent, which can name g, of a direct child).
func (pl *planner) outerMove(k, p, g int) bool {
	return p != Restorer && !pl.sibling[k] && pl.level(k) > pl.level(p) && pl.numAt(g, p) != 0
}

// birthGroups computes bg: the group each proc must be born in (or moved to
// by its outer parent at birth) so its kids can inherit it.
func (pl *planner) birthGroups() error {
	pl.bg = make([]int, len(pl.plan.Procs))
	for i := range pl.bg {
		pl.bg[i] = unset
	}
	for k := 1; k < len(pl.plan.Procs); k++ {
		p := pl.creator[k]
		if pl.mustInherit(k, p) && !pl.needGroup(p, pl.tpgid[k]) {
			if pl.leaveToParent(k) {
				continue
			}
			return fmt.Errorf("%s: group %s cannot be inherited from %s: %w", pl.plan.name(k), pl.plan.name(pl.tpgid[k]), pl.plan.name(p), ErrUnsupported)
		}
	}
	return nil
}

// needGroup says whether q can be in group g when it clones kids, claiming
// q's birth group if it must be born there.
func (pl *planner) needGroup(q, g int) bool {
	switch {
	case q == Restorer:
		return g == ext
	case pl.numAt(g, q) != 0:
		// q can visit g, unless g is in the session q leads: a session
		// leader never changes its group (setpgid: EPERM), and before its
		// setsid that session does not exist.
		return pl.tsid[q] != q || g == q || pl.tsid[g] != q
	case pl.bg[q] != unset:
		return pl.bg[q] == g
	}
	if g != pl.tpgid[q] && !pl.reachesFinalGroup(q) {
		return false // q could not leave g for its own group afterwards
	}
	cr := pl.creator[q]
	if pl.outerMove(q, cr, g) || pl.needGroup(cr, g) {
		pl.bg[q] = g
		return true
	}
	return false
}

// cloneGroup is the group creator p must be in when it clones c, or unset.
func (pl *planner) cloneGroup(c, p int) int {
	if pl.tpgid[c] == p && pl.tsid[c] != c && pl.tpgid[p] != p {
		return p // p's own group, which p leaves later (F4.1)
	}
	if pl.bg[c] != unset && !pl.outerMove(c, p, pl.bg[c]) {
		return pl.bg[c]
	}
	if pl.mustInherit(c, p) {
		return pl.tpgid[c]
	}
	return unset
}

// earlyGroup says whether c can form its own group right after its birth:
// it leads a group, not a session, and none of its kids needs to inherit
// another group. Forming groups early lets others join them.
func (pl *planner) earlyGroup(c int) bool {
	if pl.tpgid[c] != c || pl.tsid[c] == c || pl.bg[c] != unset {
		return false
	}
	for _, k := range pl.kids[c] {
		if g := pl.cloneGroup(k, c); g != unset && g != c {
			return false
		}
	}
	return true
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
		if z != c && z != p && pl.exits(z) && pl.tsid[z] == s && pl.plan.Procs[z].NS == ns && !pl.isInitOf(z, ns) && !pl.below(z, c) {
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

// agentWindow is where a restored agent's namespace cursor points while the
// agent's runtime starts its threads (agentconn.RuntimeWindow).
func (pl *planner) agentWindow() int {
	return agentconn.RuntimeWindow(pl.plan.Options.Features.PidMax)
}

// agentRestoresCursor says whether init p becomes a restored agent, which
// restores its namespace's cursor itself.
func (pl *planner) agentRestoresCursor(p int) bool { return pl.plan.becomesAgent(p) }

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

// birthSession is the session c must be cloned in, or unset for any.
func (pl *planner) birthSession(c int) int {
	if pl.tsid[c] != c {
		return pl.tsid[c]
	}
	return pl.rb[c]
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

// parentThread is the thread of creator cr that clones c: the image's
// parent thread when cr is c's parent and that is one of its restored
// threads (stopped payload; an agent's threads are its runtime's, not
// restored), else 0 (cr's leader).
func (pl *planner) parentThread(c, cr int) int {
	if pl.plan.Options.Payload != PayloadStopped || pl.sibling[c] || cr < 0 {
		return 0
	}
	ti, pi := pl.plan.Procs[c].Task, pl.plan.Procs[cr].Task
	if ti < 0 || pi < 0 {
		return 0
	}
	t, p := &pl.tr().Tasks[ti], &pl.tr().Tasks[pi]
	if t.ParentTID == 0 || t.ParentTID == t.PPID || t.PPID != p.PIDs[0] || p.Agent {
		return 0
	}
	return t.ParentTID
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
	if s.Op == OpClone && s.Actor != Restorer && pl.plan.Procs[s.Target].PIDs[0] == 0 {
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
	for l := top; l >= 0; l-- {
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
		return n.init, nil
	}
	return 0, fmt.Errorf("pid ns %d has no init to write its ns_last_pid: %w", ns, ErrUnsupported)
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

// expand runs proc p's part of the plan: it creates p's kids around p's own
// session and group changes, then expands each kid.
func (pl *planner) expand(p int) error {
	mp := func() *mproc { return &pl.m.procs[p] }
	leadsSession := pl.tsid[p] == p
	if pl.plan.Options.Payload == PayloadStopped && !pl.plan.Procs[p].IsHelper() {
		t := &pl.tr().Tasks[pl.plan.Procs[p].Task]
		// An agent's threads belong to its Go runtime, not to the image.
		if t.State != pstree.Zombie && !t.Agent {
			for _, th := range t.Threads {
				if err := pl.placed(Step{Op: OpThread, Actor: p, Target: -1, PIDs: th.TIDs}); err != nil {
					return err
				}
			}
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
	for _, c := range leaders {
		if err := clone(c); err != nil {
			return err
		}
	}
	var later, hop []int
	cloneGroup := func(c int) int { return pl.cloneGroup(c, p) }
	for _, c := range phaseA {
		switch g := cloneGroup(c); {
		case g == mp().pgid || (g == unset && pl.tpgid[c] == mp().pgid):
			if err := clone(c); err != nil {
				return err
			}
		case g == unset:
			later = append(later, c)
		default:
			hop = append(hop, c)
		}
	}
	if !leadsSession && pl.tpgid[p] == p && mp().pgid != p {
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
	if g := pl.tpgid[p]; !leadsSession && g != ext && mp().pgid != g {
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
	// Kids that lead a session or a group go first, so the groups others
	// join exist when they join them.
	slices.SortStableFunc(created, func(a, b int) int {
		rank := func(c int) int {
			switch {
			case pl.tsid[c] == c:
				return 0
			case pl.tpgid[c] == c:
				return 1
			}
			return 2
		}
		return rank(a) - rank(b)
	})
	pl.ready = append(created, pl.ready...)
	return nil
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

// cloneKid plays p's clone of its kid c and returns the proc it created:
// c, or a stand-in that clones c later, or -1 when c waits for its
// namespace's init (deferred).
func (pl *planner) cloneKid(p, c int) (int, error) {
	st := pl.cloneStep(c)
	if st.Into != 0 && pl.m.nss[st.Into].init < 0 {
		// born via setns into a namespace whose init a later part of
		// the plan creates: clone it then, when p is in its final
		// state - or, if p leaves the session or group c is to be
		// born in before then, by a stand-in born in them now.
		if pl.tsid[c] == c || !pl.leavesItsState(p) {
			pl.deferred = append(pl.deferred, c)
			return -1, nil
		}
		c = pl.standIn(p, c)
		st = pl.cloneStep(c)
	}
	if err := pl.placeClone(st); err != nil {
		return -1, err
	}
	if pl.earlyGroup(c) {
		return c, pl.setpgidTo(c, 0, c)
	}
	// An outer parent moves its inner child into a group the child
	// cannot name (F4.1), before the child does anything.
	g := pl.bg[c]
	if g == unset {
		g = pl.tpgid[c]
		if g == c || g == ext || pl.tsid[c] == c || pl.numAt(g, c) != 0 {
			return c, nil
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
	return c, nil
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
			if err := pl.placeClone(pl.cloneStep(c)); err != nil {
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
				firstErr = fmt.Errorf("no progress: %w", ErrUnsupported)
			}
			return firstErr
		}
		pl.m.undo = pl.m.undo[:0]
	}
	return nil
}

// finish appends the verification and the final actions: ns_last_pid
// cursors, helpers exiting (and being reaped by their creators), zombies
// dying, and payloads.
func (pl *planner) finish() error {
	tr := pl.tr()
	pl.plan.Verify = len(pl.plan.Steps)
	if err := pl.emit(Step{Op: OpVerify, Actor: Restorer, Target: -1}); err != nil {
		return err
	}
	if err := pl.netConfig(); err != nil {
		return err
	}
	if err := pl.pidForChildren(); err != nil {
		return err
	}
	for _, ns := range tr.Namespaces {
		if ns.Kind != pstree.PidNS || ns.Level == 0 || ns.LastPID <= 0 {
			continue
		}
		init := pl.m.nss[ns.ID].init
		if init < 0 || tr.Tasks[init].State == pstree.Zombie {
			continue // a dead namespace has no cursor to restore
		}
		v := ns.LastPID
		if pl.agentRestoresCursor(init) {
			// The agent's Go runtime threads must not sit on the pids
			// right above LastPID: they start in a high window, and the
			// agent writes LastPID itself once running.
			v = pl.agentWindow()
			for _, t := range tr.Tasks {
				if t.NS[pstree.PidNS] == ns.ID && t.InnerPID() >= v {
					return fmt.Errorf("pid ns %d: pid %d is in the agent's thread window above %d: %w", ns.ID, t.InnerPID(), v, ErrUnsupported)
				}
			}
		}
		if err := pl.emit(Step{Op: OpLastPID, Actor: init, Target: -1, Arg: v}); err != nil {
			return err
		}
	}
	// Helpers exit in reverse order of creation; their parent (not
	// always their creator: CLONE_PARENT) reaps them.
	var helpers []int
	for _, s := range pl.plan.Steps {
		if s.Op == OpClone && pl.plan.Procs[s.Target].IsHelper() {
			helpers = append(helpers, s.Target)
		}
	}
	slices.Reverse(helpers)
	for _, h := range helpers {
		if err := pl.emit(Step{Op: OpExit, Actor: h, Target: -1}); err != nil {
			return err
		}
		if err := pl.emit(Step{Op: OpWait, Actor: pl.m.procs[h].parent, Target: h}); err != nil {
			return err
		}
	}
	// Zombies die deepest namespace first, so a zombie init is alone in its
	// namespace when it dies.
	var zombies []int
	for i := range tr.Tasks {
		if tr.Tasks[i].State == pstree.Zombie {
			zombies = append(zombies, i)
		}
	}
	slices.SortStableFunc(zombies, func(a, b int) int { return pl.level(b) - pl.level(a) })
	for _, i := range zombies {
		t := &tr.Tasks[i]
		if t.ExitStatus&0x80 != 0 {
			return fmt.Errorf("task %d: exit status %#x has the core-dump bit, which needs a real core dump: %w", t.PID(), t.ExitStatus, ErrUnsupported)
		}
		if t.InnerPID() == 1 && t.Level() > 0 && t.ExitStatus&0x7f != 0 {
			// An init ignores its own signals; only SIGKILL from an
			// ancestor namespace reproduces "killed by a signal".
			if t.ExitStatus&0x7f != 9 {
				return fmt.Errorf("task %d: a pid ns init killed by signal %d cannot be reproduced: %w", t.PID(), t.ExitStatus&0x7f, ErrUnsupported)
			}
			if err := pl.emit(Step{Op: OpKill, Actor: Restorer, Target: i, Arg: 9}); err != nil {
				return err
			}
			continue
		}
		if err := pl.emit(Step{Op: OpExit, Actor: i, Target: -1, Arg: t.ExitStatus}); err != nil {
			return err
		}
	}
	for i := range tr.Tasks {
		if tr.Tasks[i].State != pstree.Zombie {
			// Both payloads take the image's ids (a stopped one before
			// it parks): unmapped ids are refused here.
			if _, _, _, _, err := taskCreds(pl.plan, i); err != nil {
				return err
			}
			if err := pl.emit(Step{Op: OpPayload, Actor: i, Target: -1}); err != nil {
				return err
			}
		}
	}
	for i := range tr.Tasks {
		if st := tr.Tasks[i].State; st == pstree.Stopped || (st == pstree.Live && pl.plan.Options.Payload == PayloadStopped) {
			if err := pl.emit(Step{Op: OpKill, Actor: Restorer, Target: i, Arg: 19}); err != nil {
				return err
			}
		}
	}
	return nil
}

// pidForChildren gives every live task whose pid_for_children is not its
// own pid namespace that namespace again, after every clone (the setns back
// after a setns-born clone would undo it) and before any zombie dies (the
// setns goes through a live process in the namespace): setns(CLONE_NEWPID)
// through a proc in it, the namespace's init if it has one, or
// unshare(CLONE_NEWPID) when nobody is in it (`unshare -p` with no child
// yet).
func (pl *planner) pidForChildren() error {
	tr := pl.tr()
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		want := t.NS[pstree.PidForChildrenNS]
		if t.State == pstree.Zombie || want == 0 || want == t.NS[pstree.PidNS] || pl.m.procs[i].pfc == want {
			continue
		}
		via := -1
		for p := range pl.plan.Procs {
			if pl.plan.Procs[p].NS == want && pl.m.procs[p].state == mAlive && (via < 0 || pl.isInitOf(p, want)) {
				via = p
			}
		}
		s := Step{Op: OpSetPFC, Actor: i, Target: via, Into: want}
		if via < 0 {
			s.NewPIDNS, s.Target = true, -1
		}
		if err := pl.emit(s); err != nil {
			return err
		}
	}
	return nil
}
