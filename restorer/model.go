package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
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
	// kernel: every pid here is the kernel's choice, and the model's
	// numbers are the image's names for them (Options.HostPIDsAny).
	kernel bool
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
	// kids: how many procs have it as parent (reaped ones too), so
	// that exit looks for children to reparent only in a proc that has
	// some: not every zombie's exit a pass over all procs (n*n in a plan
	// of n, issue #14).
	kids int
	// parentTID: the level-0 tid of the parent's thread it is a child
	// of, 0 for the parent's leader
	parentTID int
	sid, pgid int // leader proc (pid struct), or ext
	status    int
	stopped   bool
	payload   bool
	threads   [][]int
	subreaper bool // PR_SET_CHILD_SUBREAPER (OpSubreaper)
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
		case int(unix.SIGSTOP):
			m.saveProc(s.Target)
			t.stopped = true
		case int(unix.SIGKILL):
			return m.exit(s.Target, int(unix.SIGKILL))
		default:
			return fmt.Errorf("restorer sends only SIGSTOP/SIGKILL, not %d", s.Arg)
		}
	case OpPayload:
		m.saveProc(s.Actor)
		m.procs[s.Actor].payload = true
	case OpSubreaper:
		m.saveProc(s.Actor)
		m.procs[s.Actor].subreaper = true
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
