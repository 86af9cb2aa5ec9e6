package restorer

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// model is a small model of the kernel rules a plan relies on (see
// docs/kernel.md): pid numbers per namespace level (set_tid, EEXIST),
// parents (CLONE_PARENT, reparenting to the ns init), session and group
// inheritance and the setsid/setpgid rules of F4.1, CLONE_NEWPID only when
// pid_for_children is the active namespace (F2.3), a dead init killing its
// namespace (F5.3). The planner applies each step to it as it plans; tests
// run plans through it.
type model struct {
	tr    *pstree.Tree
	nss   map[pstree.NSID]*mns
	procs []mproc
	// used maps a pid number of a namespace to the proc owning that pid
	// struct (threads are owned by their task).
	used map[nsNum]int
	// made: namespaces (not pid) created so far; own: the restorer's.
	made map[pstree.NSID]bool
	own  pstree.NSSet
	// owner: the user namespace each namespace the restore created (not
	// pid, not user) was created in; mapped: user namespaces whose maps
	// are written.
	owner  map[pstree.NSID]pstree.NSID
	mapped map[pstree.NSID]bool
	// undo, when journaling, holds what reverts each change since mark.
	undo    []func()
	journal bool
	// image maps every pid and thread id of an image task, per namespace,
	// to its task index: numbers no helper may take.
	image map[nsNum]int
}

// saveProc, saveNS and saveUsed record the old value before a change.
func (m *model) saveProc(i int) {
	if m.journal {
		old := m.procs[i]
		m.undo = append(m.undo, func() { m.procs[i] = old })
	}
}

func (m *model) saveNS(id pstree.NSID) {
	if m.journal {
		n := m.nss[id]
		old := *n
		m.undo = append(m.undo, func() { *n = old })
	}
}

func (m *model) setUsed(k nsNum, p int) {
	if m.journal {
		m.undo = append(m.undo, func() { delete(m.used, k) })
	}
	m.used[k] = p
}

// rollback reverts every change back to undo mark.
func (m *model) rollback(mark int) {
	for i := len(m.undo) - 1; i >= mark; i-- {
		m.undo[i]()
	}
	m.undo = m.undo[:mark]
}

type nsNum struct {
	ns  pstree.NSID
	num int
}

type mns struct {
	level  int
	parent pstree.NSID
	init   int // proc index of its pid 1, -1 before it exists
	dead   bool
	made   bool        // created by unshare(CLONE_NEWPID) before it has an init
	owner  pstree.NSID // its user namespace, set when created (0: unknown)
	last   int         // ns_last_pid cursor
}

// ext is the leader of a session or group outside the tree (the one the
// restorer itself runs in).
const ext = -2

type mstate int

const (
	mNone mstate = iota
	mAlive
	mZombie
	mReaped
)

type mproc struct {
	state   mstate
	pids    []int
	ns      pstree.NSID
	pfc     pstree.NSID  // pid_for_children when not ns (0: ns)
	nsk     pstree.NSSet // its namespaces of memberKinds
	credsIn pstree.NSID  // user ns whose ids it set (OpSetCreds)
	parent  int
	// parentTID: the level-0 tid of the parent's thread it is a child
	// of, 0 for the parent's leader
	parentTID int
	sid, pgid int // leader proc (pid struct), or ext
	status    int
	stopped   bool
	payload   bool
	threads   [][]int
}

func newModel(tr *pstree.Tree, nprocs int) *model {
	m := &model{tr: tr, nss: map[pstree.NSID]*mns{}, used: map[nsNum]int{}, made: map[pstree.NSID]bool{}, own: restorerNS(tr),
		owner: map[pstree.NSID]pstree.NSID{}, mapped: map[pstree.NSID]bool{}}
	for _, n := range tr.Namespaces {
		if n.Kind == pstree.PidNS {
			m.nss[n.ID] = &mns{level: n.Level, parent: n.Parent, init: -1}
			if n.Level == 0 {
				m.nss[n.ID].last = -1 // the host's: unknown until written
				m.nss[n.ID].owner = m.own[pstree.UserNS]
			}
		}
	}
	m.procs = make([]mproc, nprocs)
	m.image = map[nsNum]int{}
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		c := m.chain(t.NS[pstree.PidNS])
		ids := [][]int{t.PIDs}
		for _, th := range t.Threads {
			ids = append(ids, th.TIDs)
		}
		for _, nums := range ids {
			for l, n := range nums {
				if l < len(c) {
					m.image[nsNum{c[l], n}] = i
				}
			}
		}
	}
	return m
}

// chain lists ns and its ancestors, outermost first.
func (m *model) chain(ns pstree.NSID) []pstree.NSID {
	var c []pstree.NSID
	for id := ns; id != 0; id = m.nss[id].parent {
		c = append(c, id)
		if len(c) > 64 || m.nss[id] == nil {
			break
		}
	}
	slices.Reverse(c)
	return c
}

// isDescendant says whether ns is anc or below it.
func (m *model) isDescendant(ns, anc pstree.NSID) bool {
	return slices.Contains(m.chain(ns), anc)
}

// actorNS is the active pid namespace of actor; the restorer runs in the
// image's level-0 namespace.
func (m *model) actorNS(actor int, root pstree.NSID) pstree.NSID {
	if actor == Restorer {
		return root
	}
	return m.procs[actor].ns
}

// num is leader's pid number at level l of namespace chain c, 0 if it has
// none there (it lives in an ancestor, F3.1).
func (m *model) num(leader int, c []pstree.NSID, l int) int {
	if leader < 0 {
		return 0
	}
	p := &m.procs[leader]
	pc := m.chain(p.ns)
	if l >= len(pc) || l >= len(c) || pc[l] != c[l] {
		return 0
	}
	return p.pids[l]
}

// lookup resolves a pid number in namespace ns to its pid struct.
func (m *model) lookup(ns pstree.NSID, num int) (int, bool) {
	p, ok := m.used[nsNum{ns, num}]
	return p, ok
}

func (m *model) apply(pl *Plan, i int) error {
	s := &pl.Steps[i]
	rootNS := m.rootNS(pl)
	if s.Actor != Restorer {
		if s.Actor < 0 || s.Actor >= len(m.procs) {
			return fmt.Errorf("bad actor %d", s.Actor)
		}
		a := &m.procs[s.Actor]
		if a.state != mAlive || (a.payload && s.Op != OpPayload) {
			return fmt.Errorf("actor %s is not running restorer code", pl.name(s.Actor))
		}
	}
	switch s.Op {
	case OpClone:
		return m.clone(pl, s, rootNS)
	case OpSetsid:
		a := &m.procs[s.Actor]
		if a.pgid == s.Actor {
			return fmt.Errorf("setsid by a group leader: EPERM")
		}
		m.saveProc(s.Actor)
		a.sid, a.pgid = s.Actor, s.Actor
	case OpSetpgid:
		return m.setpgid(pl, s)
	case OpThread:
		a := &m.procs[s.Actor]
		c := m.chain(a.ns)
		if len(s.PIDs) != len(c) {
			return fmt.Errorf("thread tids %v for %d levels", s.PIDs, len(c))
		}
		if err := m.allocate(c, s.PIDs, false, setFrom(s, len(c))); err != nil {
			return err
		}
		for l, t := range s.PIDs {
			m.setUsed(nsNum{c[l], t}, s.Actor)
		}
		m.saveProc(s.Actor)
		a.threads = append(a.threads[:len(a.threads):len(a.threads)], s.PIDs)
	case OpVerify:
	case OpLastPID:
		ns := m.actorNS(s.Actor, rootNS)
		if s.Actor != Restorer {
			if o := m.nss[ns].owner; o != 0 && !m.capable(m.procs[s.Actor].nsk[pstree.UserNS], o) {
				return fmt.Errorf("ns_last_pid of pid ns %d: no capability over its owner user ns %d: EPERM", ns, o)
			}
		}
		m.saveNS(ns)
		m.nss[ns].last = s.Arg
		if s.Arg < 0 && m.nss[ns].level != 0 {
			return fmt.Errorf("only the host cursor can be parked")
		}
	case OpWait:
		t := &m.procs[s.Target]
		if t.parent != s.Actor || t.state != mZombie {
			return fmt.Errorf("wait for %s: not a zombie child", pl.name(s.Target))
		}
		m.saveProc(s.Target)
		t.state = mReaped
	case OpExit:
		return m.exit(s.Actor, s.Arg)
	case OpKill:
		t := &m.procs[s.Target]
		if t.state != mAlive {
			return fmt.Errorf("kill %s: not alive", pl.name(s.Target))
		}
		switch s.Arg {
		case 19: // SIGSTOP
			m.saveProc(s.Target)
			t.stopped = true
		case 9:
			return m.exit(s.Target, 9)
		default:
			return fmt.Errorf("restorer sends only SIGSTOP/SIGKILL, not %d", s.Arg)
		}
	case OpPayload:
		m.saveProc(s.Actor)
		m.procs[s.Actor].payload = true
	case OpSetPFC:
		return m.setPFC(pl, s)
	case OpUnshare:
		return m.unshareNS(pl, s)
	case OpSetns:
		return m.setnsNS(pl, s)
	case OpHostname:
	case OpUserMap:
		return m.userMap(pl, s)
	case OpSetCreds:
		a := &m.procs[s.Actor]
		u := a.nsk[pstree.UserNS]
		if u != m.own[pstree.UserNS] && !m.mapped[u] {
			return fmt.Errorf("setresuid in user ns %d before its maps are written: EINVAL", u)
		}
		m.saveProc(s.Actor)
		a.credsIn = u
	case OpNetConfig:
		if t := s.Target; t < 0 || t >= len(m.procs) || m.procs[t].state != mAlive || m.procs[t].nsk[pstree.NetNS] != s.NS[pstree.NetNS] {
			return fmt.Errorf("configure net namespace %d: proc %d is not a live member", s.NS[pstree.NetNS], t)
		}
	default:
		return fmt.Errorf("unknown op %d", s.Op)
	}
	return nil
}

// setPFC is setns(CLONE_NEWPID) (F2.3: only into the active namespace or
// a descendant, through a live process in it) or unshare(CLONE_NEWPID) (a
// fresh child of the active namespace).
func (m *model) setPFC(pl *Plan, s *Step) error {
	a := &m.procs[s.Actor]
	var to pstree.NSID
	switch {
	case s.NewPIDNS:
		n := m.nss[s.Into]
		if n == nil || n.parent != a.ns || n.init >= 0 || n.made {
			return fmt.Errorf("unshare(CLONE_NEWPID) as pid ns %d: not a fresh child of ns %d", s.Into, a.ns)
		}
		m.saveNS(s.Into)
		n.made = true
		to = s.Into
	default:
		if s.Target < 0 || s.Target >= len(m.procs) {
			return fmt.Errorf("setns(CLONE_NEWPID) through proc %d: out of range", s.Target)
		}
		t := &m.procs[s.Target]
		if t.state != mAlive || t.ns != s.Into {
			return fmt.Errorf("setns(CLONE_NEWPID) through %s: not alive in pid ns %d: ESRCH", pl.name(s.Target), s.Into)
		}
		if !m.isDescendant(s.Into, a.ns) {
			return fmt.Errorf("setns to pid ns %d: not below the actor's: EINVAL", s.Into)
		}
		if o := m.nss[s.Into].owner; o != 0 && !m.capable(a.nsk[pstree.UserNS], o) {
			return fmt.Errorf("setns to pid ns %d: no CAP_SYS_ADMIN over its owner user ns %d: EPERM", s.Into, o)
		}
		to = s.Into
	}
	m.saveProc(s.Actor)
	a.pfc = to
	return nil
}

func (m *model) rootNS(pl *Plan) pstree.NSID {
	return m.chain(pl.Procs[0].NS)[0]
}

func (m *model) clone(pl *Plan, s *Step, rootNS pstree.NSID) error {
	if s.Target < 0 || s.Target >= len(m.procs) || m.procs[s.Target].state != mNone {
		return fmt.Errorf("clone of proc %d: already created or out of range", s.Target)
	}
	pr := &pl.Procs[s.Target]
	active := m.actorNS(s.Actor, rootNS)
	pfc := active
	user := m.own[pstree.UserNS]
	if s.Actor != Restorer {
		user = m.procs[s.Actor].nsk[pstree.UserNS]
	}
	if s.Thread != 0 {
		// A thread of the actor clones (OpClone by a parent thread): it
		// exists, and the clone makes no user namespace (the thread
		// keeps the ids it was born with, while the leader may take
		// others to create one, OpSetCreds). Its pid_for_children is
		// its active namespace: CLONE_THREAD needs that (F7.3), and
		// only the leader ever changes its own (OpSetPFC).
		if s.Actor == Restorer || s.AsSibling || s.NS[pstree.UserNS] != 0 {
			return fmt.Errorf("clone by thread %d of %s: only a plain clone by a task's thread is planned", s.Thread, pl.name(s.Actor))
		}
		if !slices.ContainsFunc(m.procs[s.Actor].threads, func(t []int) bool { return t[0] == s.Thread }) {
			return fmt.Errorf("clone by thread %d of %s, which has no such thread", s.Thread, pl.name(s.Actor))
		}
	} else if s.Actor != Restorer && m.procs[s.Actor].pfc != 0 {
		// A creator that cannot setns back to its own pid namespace set
		// its pid_for_children for good (the planner's placeClone).
		if s.Into != 0 || s.NewPIDNS {
			return fmt.Errorf("clone by %s with setns or CLONE_NEWPID after it set its pid_for_children: EINVAL", pl.name(s.Actor))
		}
		pfc = m.procs[s.Actor].pfc
	}
	if s.Into != 0 {
		if !m.isDescendant(s.Into, active) {
			return fmt.Errorf("setns to pid ns %d: not below the actor's: EINVAL", s.Into)
		}
		if s.NewPIDNS {
			return fmt.Errorf("CLONE_NEWPID after setns: EINVAL")
		}
		// setns(CLONE_NEWPID) needs CAP_SYS_ADMIN over the owner of the
		// namespace entered, there and back again (F2.3).
		for _, ns := range []pstree.NSID{s.Into, active} {
			if o := m.nss[ns].owner; o != 0 && !m.capable(user, o) {
				return fmt.Errorf("setns to pid ns %d by %s: no CAP_SYS_ADMIN over its owner user ns %d from user ns %d: EPERM", ns, pl.name(s.Actor), o, user)
			}
		}
		pfc = s.Into
	}
	ns := pfc
	if s.NewPIDNS {
		n := m.nss[pr.NS]
		if n == nil || n.parent != pfc || n.init >= 0 {
			return fmt.Errorf("new pid ns %d is not a fresh child of ns %d", pr.NS, pfc)
		}
		ns = pr.NS
		if pr.PIDs[len(pr.PIDs)-1] != 1 {
			return fmt.Errorf("CLONE_NEWPID with set_tid[0] != 1: EINVAL")
		}
	}
	if ns != pr.NS {
		return fmt.Errorf("proc %s would land in pid ns %d, wants %d", pl.name(s.Target), ns, pr.NS)
	}
	if m.nss[ns].dead {
		return fmt.Errorf("clone into pid ns %d whose init died: ENOMEM", ns)
	}
	c := m.chain(ns)
	if len(pr.PIDs) != len(c) {
		return fmt.Errorf("%d pids for %d levels: EINVAL", len(pr.PIDs), len(c))
	}
	if pr.IsHelper() {
		if err := m.helperPIDs(pl, s, c); err != nil {
			return err
		}
	}
	if err := m.allocate(c, pr.PIDs, s.NewPIDNS, setFrom(s, len(c))); err != nil {
		return err
	}
	parent := s.Actor
	if s.AsSibling {
		if s.Actor == Restorer {
			return fmt.Errorf("restorer cannot CLONE_PARENT")
		}
		a := &m.procs[s.Actor]
		if a.pids[len(a.pids)-1] == 1 {
			return fmt.Errorf("CLONE_PARENT by a pid ns init: EINVAL")
		}
		parent = a.parent
	}
	sid, pgid := ext, ext
	if s.Actor != Restorer {
		sid, pgid = m.procs[s.Actor].sid, m.procs[s.Actor].pgid
	}
	for l, p := range pr.PIDs {
		if p != 0 {
			m.setUsed(nsNum{c[l], p}, s.Target)
		}
	}
	nsk := m.own
	credsIn := pstree.NSID(0)
	if s.Actor != Restorer {
		nsk, credsIn = m.procs[s.Actor].nsk, m.procs[s.Actor].credsIn
	}
	// set_tid is checked against the caller's credentials (alloc_pid runs
	// in the parent), before any CLONE_NEWUSER of the same call matters.
	if err := m.cloneCaps(s, c, pr.PIDs, nsk[pstree.UserNS]); err != nil {
		return err
	}
	if u := s.NS[pstree.UserNS]; u != 0 {
		if err := m.cloneUser(u, nsk[pstree.UserNS], credsIn, s); err != nil {
			return err
		}
		nsk[pstree.UserNS] = u
	}
	m.saveProc(s.Target)
	parentTID := s.Thread
	if s.AsSibling {
		parentTID = 0 // the actor's parent's: the model knows only leaders there
	}
	m.procs[s.Target] = mproc{state: mAlive, pids: pr.PIDs, ns: ns, parent: parent, parentTID: parentTID, sid: sid, pgid: pgid, nsk: nsk}
	if s.NewPIDNS {
		// copy_process creates the user namespace of CLONE_NEWUSER (in
		// copy_creds) before the pid namespace (copy_namespaces): the
		// new pid namespace is owned by the child's user namespace.
		m.saveNS(ns)
		m.nss[ns].init = s.Target
		m.nss[ns].owner = nsk[pstree.UserNS]
		if want := m.tr.Namespace(ns).Owner; want != 0 && !m.tr.Namespace(want).Ambient && want != nsk[pstree.UserNS] {
			return fmt.Errorf("pid ns %d would be owned by user ns %d (its creator's), the image says %d", ns, nsk[pstree.UserNS], want)
		}
	}
	return nil
}

// helperPIDs checks the pids of helper s.Target in namespace chain c: a
// helper takes no pid or thread id of an image task at any level, and a
// pid the kernel chooses (0) comes from a cursor that is known and at or
// above every pid still to be created at that level (F1.3: the kernel takes
// the first free number above it), so it cannot take one either. The
// level-0 writer, the restorer's own first clone, is the exception: it
// exists before any image pid, and the precheck finds an image pid taken.
// Afterwards such a level's cursor is unknown again (the host's is shared
// with every process of the machine).
func (m *model) helperPIDs(pl *Plan, s *Step, c []pstree.NSID) error {
	pids := pl.Procs[s.Target].PIDs
	for l, p := range pids {
		if p != 0 {
			if t, ok := m.image[nsNum{c[l], p}]; ok {
				return fmt.Errorf("helper %s takes pid %d at level %d, task %d's", pl.name(s.Target), p, l, pl.Tree.Tasks[t].PID())
			}
			continue
		}
		if s.Actor == Restorer {
			continue
		}
		n := m.nss[c[l]]
		if n.last < 0 {
			return fmt.Errorf("helper %s: the kernel chooses its pid at level %d from a cursor nobody set", pl.name(s.Target), l)
		}
		for k := range m.image {
			if k.ns == c[l] && k.num > n.last {
				if _, done := m.used[k]; !done {
					return fmt.Errorf("helper %s: the kernel chooses its pid at level %d above %d, where pid %d is still to be created", pl.name(s.Target), l, n.last, k.num)
				}
			}
		}
		m.saveNS(c[l])
		n.last = -1
	}
	return nil
}

// cloneUser is the model of CLONE_NEWUSER in a clone3: the child is the
// first member of user namespace u, a child of the caller's user
// namespace from, which must map the caller's ids (create_user_ns); the
// kernel forbids it with CLONE_THREAD and CLONE_FS only, which builder
// clones never use.
func (m *model) cloneUser(u, from, credsIn pstree.NSID, s *Step) error {
	ns := m.tr.Namespace(u)
	if ns == nil || ns.Kind != pstree.UserNS {
		return fmt.Errorf("CLONE_NEWUSER as %d: not a user namespace", u)
	}
	if m.made[u] {
		return fmt.Errorf("user namespace %d created twice", u)
	}
	parent := ns.Parent
	if parent == 0 || m.tr.Namespace(parent).Ambient {
		parent = m.own[pstree.UserNS]
	}
	if parent != from {
		return fmt.Errorf("CLONE_NEWUSER of user namespace %d from user namespace %d, its parent is %d", u, from, parent)
	}
	if from != m.own[pstree.UserNS] && (!m.mapped[from] || credsIn != from) {
		return fmt.Errorf("CLONE_NEWUSER of user namespace %d inside user namespace %d with ids it does not map: EPERM", u, from)
	}
	if s.Into != 0 {
		return fmt.Errorf("CLONE_NEWUSER with a setns-born clone: not planned")
	}
	m.setMade(u)
	return nil
}

// cloneCaps checks the capabilities a clone needs: CAP_CHECKPOINT_RESTORE
// in the owner of every level set_tid sets, and CAP_SYS_ADMIN (in the
// creator's own user namespace, which every builder has) for CLONE_NEWPID.
func (m *model) cloneCaps(s *Step, c []pstree.NSID, pids []int, user pstree.NSID) error {
	if !s.SetTID {
		return nil
	}
	for l := range c {
		if l < setFrom(s, len(c)) || pids[l] == 0 || (s.NewPIDNS && l == len(c)-1) {
			continue
		}
		if o := m.nss[c[l]].owner; o != 0 && !m.capable(user, o) {
			return fmt.Errorf("set_tid %d at level %d: no CAP_CHECKPOINT_RESTORE over its owner user ns %d from user ns %d: EPERM", pids[l], l, o, user)
		}
	}
	return nil
}

// agentWindowOf is the planner's agentWindow for a plan.
func agentWindowOf(pl *Plan) int { return (&planner{plan: pl}).agentWindow() }

// setFrom is the outermost level step s's set_tid sets (n: none).
func setFrom(s *Step, n int) int {
	if !s.SetTID {
		return n
	}
	return s.SetFrom
}

// allocate checks that a clone gets pids at every level of chain c: the
// innermost through set_tid (which leaves the cursor alone, F1.4) or as pid 1
// of a new namespace, the others as the first free pid above their
// namespace's cursor, which then moves (F1.3). A level whose cursor is
// unknown (the host before the restorer wrote it) cannot be predicted.
// set_tid gives the levels from `from` on (every one of them on kernels
// with Features.MultiLevelSetTID, F2.1): no cursor is read or moved there.
func (m *model) allocate(c []pstree.NSID, pids []int, newNS bool, from int) error {
	if len(pids) != len(c) {
		return fmt.Errorf("%d pids for %d levels: EINVAL", len(pids), len(c))
	}
	for l, p := range pids {
		inner := l == len(c)-1
		if p == 0 {
			continue // left to the kernel: not an image pid
		}
		if _, ok := m.used[nsNum{c[l], p}]; ok {
			return fmt.Errorf("pid %d at level %d: %w", p, l, ErrPIDTaken)
		}
		switch {
		case inner && newNS:
			if p != 1 {
				return fmt.Errorf("CLONE_NEWPID with pid %d != 1: EINVAL", p)
			}
			continue
		case l >= from:
			if inner && p == 1 {
				return fmt.Errorf("pid 1 without CLONE_NEWPID: EEXIST")
			}
			if p != 1 && m.nss[c[l]].level > 0 && m.nss[c[l]].init < 0 {
				return fmt.Errorf("set_tid %d at level %d before its namespace has an init: EINVAL", p, l)
			}
			continue
		}
		n := m.nss[c[l]]
		if n.last < 0 {
			return fmt.Errorf("level %d: cursor unknown, pid %d cannot be predicted", l, p)
		}
		next := n.last + 1
		for {
			if _, ok := m.used[nsNum{c[l], next}]; !ok {
				break
			}
			next++
		}
		if next != p {
			return fmt.Errorf("level %d: the cursor (%d) gives pid %d, want %d", l, n.last, next, p)
		}
		m.saveNS(c[l])
		n.last = p
	}
	return nil
}

func (m *model) setpgid(pl *Plan, s *Step) error {
	a := &m.procs[s.Actor]
	c := m.chain(a.ns)
	target := s.Actor
	if s.Arg != 0 {
		t, ok := m.lookup(c[len(c)-1], s.Arg)
		if !ok || m.procs[t].parent != s.Actor || m.procs[t].state != mAlive {
			return fmt.Errorf("setpgid(%d): not a child: ESRCH", s.Arg)
		}
		target = t
	}
	t := &m.procs[target]
	if t.sid != a.sid {
		return fmt.Errorf("setpgid(%d): other session: EPERM", s.Arg)
	}
	if t.sid == target {
		return fmt.Errorf("setpgid of a session leader: EPERM")
	}
	g := target
	if s.Arg2 != 0 {
		var ok bool
		if g, ok = m.lookup(c[len(c)-1], s.Arg2); !ok {
			return fmt.Errorf("setpgid(%d, %d): no such group in the actor's ns: EPERM", s.Arg, s.Arg2)
		}
	}
	if g != target {
		found := false
		for i := range m.procs {
			p := &m.procs[i]
			if p.state == mAlive || p.state == mZombie {
				if p.pgid == g && p.sid == a.sid {
					found = true
					break
				}
			}
		}
		if !found {
			return fmt.Errorf("setpgid(%d, %d): group does not exist in the session: EPERM", s.Arg, s.Arg2)
		}
	}
	m.saveProc(target)
	t.pgid = g
	return nil
}

func (m *model) exit(p int, status int) error {
	pr := &m.procs[p]
	n := m.nss[pr.ns]
	if n.init == p {
		for i := range m.procs {
			q := &m.procs[i]
			if i != p && (q.state == mAlive || q.state == mZombie) && m.isDescendant(q.ns, pr.ns) {
				return fmt.Errorf("init of pid ns %d exits while its members live: they would be killed", pr.ns)
			}
		}
		m.saveNS(pr.ns)
		n.dead = true
	}
	m.saveProc(p)
	pr.state = mZombie
	pr.status = status
	reaper := Restorer
	if n.init >= 0 && n.init != p {
		reaper = n.init
	}
	for i := range m.procs {
		if m.procs[i].parent == p && m.procs[i].state != mNone {
			m.saveProc(i)
			m.procs[i].parent, m.procs[i].parentTID = reaper, 0 // the reaper's leader while it lives
		}
	}
	return nil
}

// compare checks the model's final state against the image: pids, parent,
// pgid and sid at every level, state, exit status and (when restored)
// threads. Sessions and groups led from outside the tree are not compared:
// the restored root inherits the restorer's.
func (m *model) compare(pl *Plan, procOf []int) error {
	tr := pl.Tree
	for ti := range tr.Tasks {
		t := &tr.Tasks[ti]
		pi := procOf[ti]
		p := &m.procs[pi]
		name := pl.name(pi)
		if p.state == mNone || p.state == mReaped {
			return fmt.Errorf("%s: not present", name)
		}
		if !slices.Equal(p.pids, t.PIDs) {
			return fmt.Errorf("%s: pids %v, want %v", name, p.pids, t.PIDs)
		}
		ppid := 0
		if p.parent >= 0 {
			ppid = m.procs[p.parent].pids[0]
		}
		if ppid != t.PPID {
			return fmt.Errorf("%s: parent %d, want %d", name, ppid, t.PPID)
		}
		// Which of the parent's threads: threads exist only with the
		// stopped payload (the exec payload records but cannot honour
		// it: exec ends every other thread).
		if pl.Options.Payload == PayloadStopped && t.ParentTID != 0 && ti > 0 {
			want := t.ParentTID
			if want == t.PPID {
				want = 0
			}
			if p.parentTID != want && !parentIsAgent(tr, t) {
				return fmt.Errorf("%s: child of thread %d of its parent, want %d", name, cmp.Or(p.parentTID, ppid), t.ParentTID)
			}
		}
		c := m.chain(p.ns)
		for l := range t.PIDs {
			if p.sid != ext {
				if got := m.num(p.sid, c, l); got != t.SIDs[l] {
					return fmt.Errorf("%s: sid %d at level %d, want %d", name, got, l, t.SIDs[l])
				}
			}
			if p.pgid != ext {
				if got := m.num(p.pgid, c, l); got != t.PGIDs[l] {
					return fmt.Errorf("%s: pgid %d at level %d, want %d", name, got, l, t.PGIDs[l])
				}
			}
		}
		switch {
		case t.State == pstree.Zombie:
			if p.state != mZombie || p.status != t.ExitStatus {
				return fmt.Errorf("%s: state %v status %d, want zombie status %d", name, p.state, p.status, t.ExitStatus)
			}
		case p.state != mAlive || !p.payload:
			return fmt.Errorf("%s: not running its payload", name)
		case (t.State == pstree.Stopped || pl.Options.Payload == PayloadStopped) != p.stopped:
			return fmt.Errorf("%s: stopped=%v, want %v", name, p.stopped, !p.stopped)
		}
		if t.State != pstree.Zombie {
			if err := m.compareNS(name, t, p); err != nil {
				return err
			}
		}
		if want := t.NS[pstree.PidForChildrenNS]; t.State != pstree.Zombie && want != 0 {
			got := p.ns
			if p.pfc != 0 {
				got = p.pfc
			}
			if got != want {
				return fmt.Errorf("%s: pid_for_children ns %d, want %d", name, got, want)
			}
		}
		if t.State != pstree.Zombie && pl.Options.Payload == PayloadStopped && !t.Agent {
			if len(p.threads) != len(t.Threads) {
				return fmt.Errorf("%s: %d threads, want %d", name, len(p.threads), len(t.Threads))
			}
			for i := range t.Threads {
				if !slices.Equal(p.threads[i], t.Threads[i].TIDs) {
					return fmt.Errorf("%s: thread %v, want %v", name, p.threads[i], t.Threads[i].TIDs)
				}
			}
		}
	}
	// Helpers exist only during the restore: each one has exited and its
	// parent reaped it (its children went where the image has them).
	for i := range pl.Procs {
		if pl.Procs[i].IsHelper() && m.procs[i].state != mReaped {
			return fmt.Errorf("%s (%s) is still there at the end", pl.name(i), pl.Procs[i].Why)
		}
	}
	for id, n := range m.nss {
		ns := tr.Namespace(id)
		if ns.Level > 0 && ns.LastPID > 0 && !n.dead && n.last != ns.LastPID && n.last != agentWindowOf(pl) {
			return fmt.Errorf("pid ns %d: ns_last_pid %d, want %d", id, n.last, ns.LastPID)
		}
	}
	return nil
}

// parentIsAgent says whether t's parent is an nsinit agent, whose threads
// are its Go runtime's: not restored, so not which of them forked t.
func parentIsAgent(tr *pstree.Tree, t *pstree.Task) bool {
	p := tr.Task(t.PPID)
	return p != nil && p.Agent
}
