package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// rootNS is the outermost pid namespace of the plan (the restorer's).
func (m *model) rootNS(pl *Plan) pstree.NSID {
	return m.chain(pl.Procs[0].NS)[0]
}

// landingNS is the pid namespace clone step s puts its child in: the
// actor's pid_for_children (or its thread's active namespace), the one it
// setns'ed into, or the new one of CLONE_NEWPID, with the kernel's
// conditions on each (F2.3, F7.3).
func (m *model) landingNS(pl *Plan, s *Step, rootNS pstree.NSID) (pstree.NSID, error) {
	pr := &pl.Procs[s.Target]
	active := m.actorNS(s.Actor, rootNS)
	pfc := active
	user := m.own[pstree.UserNS]
	if s.Actor != Restorer {
		user = m.procs[s.Actor].nsk[pstree.UserNS]
	}
	if s.Thread != 0 {
		// A thread of the actor clones (OpClone by a parent thread): it
		// exists, and the clone makes a user namespace only from the
		// restorer's, whose ids every builder thread has (a thread
		// keeps the ids it was born with, while the leader may take
		// others to create one, OpSetCreds). Its pid_for_children is
		// its active namespace: CLONE_THREAD needs that (F7.3), and
		// only the leader ever changes its own (OpSetPFC).
		if s.Actor == Restorer || s.AsSibling || (s.NS[pstree.UserNS] != 0 && user != m.own[pstree.UserNS]) {
			return 0, fmt.Errorf("clone by thread %d of %s: only a plain clone, or one that makes a user namespace from the restorer's, by a task's thread is planned", s.Thread, pl.name(s.Actor))
		}
		if !slices.ContainsFunc(m.procs[s.Actor].threads, func(t []int) bool { return t[0] == s.Thread }) {
			return 0, fmt.Errorf("clone by thread %d of %s, which has no such thread", s.Thread, pl.name(s.Actor))
		}
	} else if s.Actor != Restorer && m.procs[s.Actor].pfc != 0 {
		// A creator that cannot setns back to its own pid namespace set
		// its pid_for_children for good (the planner's placeClone).
		if s.Into != 0 || s.NewPIDNS {
			return 0, fmt.Errorf("clone by %s with setns or CLONE_NEWPID after it set its pid_for_children: EINVAL", pl.name(s.Actor))
		}
		pfc = m.procs[s.Actor].pfc
	}
	if s.Into != 0 {
		if !m.isDescendant(s.Into, active) {
			return 0, fmt.Errorf("setns to pid ns %d: not below the actor's: EINVAL", s.Into)
		}
		if s.NewPIDNS {
			return 0, fmt.Errorf("CLONE_NEWPID after setns: EINVAL")
		}
		// setns(CLONE_NEWPID) needs CAP_SYS_ADMIN over the owner of the
		// namespace entered, there and back again (F2.3).
		for _, ns := range []pstree.NSID{s.Into, active} {
			if o := m.nss[ns].owner; o != 0 && !m.capable(user, o) {
				return 0, fmt.Errorf("setns to pid ns %d by %s: no CAP_SYS_ADMIN over its owner user ns %d from user ns %d: EPERM", ns, pl.name(s.Actor), o, user)
			}
		}
		pfc = s.Into
	}
	ns := pfc
	if s.NewPIDNS {
		n := m.nss[pr.NS]
		if n == nil || n.parent != pfc || n.init >= 0 {
			return 0, fmt.Errorf("new pid ns %d is not a fresh child of ns %d", pr.NS, pfc)
		}
		ns = pr.NS
		if pr.PIDs[len(pr.PIDs)-1] != 1 {
			return 0, fmt.Errorf("CLONE_NEWPID with set_tid[0] != 1: EINVAL")
		}
	}
	if ns != pr.NS {
		return 0, fmt.Errorf("proc %s would land in pid ns %d, wants %d", pl.name(s.Target), ns, pr.NS)
	}
	if m.nss[ns].dead {
		return 0, fmt.Errorf("clone into pid ns %d whose init died: ENOMEM", ns)
	}
	return ns, nil
}

// clone plays clone step s: the child lands in landingNS with the pids
// the step gives it (allocate), the parent, session and group the kernel
// gives it, and the actor's namespaces and credentials.
func (m *model) clone(pl *Plan, s *Step, rootNS pstree.NSID) error {
	if s.Target < 0 || s.Target >= len(m.procs) || m.procs[s.Target].state != mNone {
		return fmt.Errorf("clone of proc %d: already created or out of range", s.Target)
	}
	pr := &pl.Procs[s.Target]
	ns, err := m.landingNS(pl, s, rootNS)
	if err != nil {
		return err
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
	// set_tid is checked against the caller's credentials (F2.10: alloc_pid runs
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
		// CLONE_PARENT copies the actor's real parent, a thread: the
		// one that cloned the actor (F7.5).
		parentTID = 0
		if s.Actor != Restorer {
			parentTID = m.procs[s.Actor].parentTID
		}
	}
	m.procs[s.Target] = mproc{state: mAlive, pids: pr.PIDs, ns: ns, parent: parent, parentTID: parentTID, sid: sid, pgid: pgid, nsk: nsk}
	if parent >= 0 {
		m.saveProc(parent)
		m.procs[parent].kids++
	}
	if s.NewPIDNS {
		// copy_process creates the user namespace of CLONE_NEWUSER (in
		// copy_creds) before the pid namespace (copy_namespaces, F2.9): the
		// new pid namespace is owned by the child's user namespace.
		m.saveNS(ns)
		m.nss[ns].init = s.Target
		m.nss[ns].owner = nsk[pstree.UserNS]
		// An ambient owner is the restorer's own user namespace (m.own):
		// a creator in another one makes another owner (histories seed
		// 549: the creator entered its user namespace after the clone).
		if want := m.tr.Namespace(ns).Owner; want != 0 && want != nsk[pstree.UserNS] {
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
		if s.Actor == Restorer || m.nss[c[l]].kernel {
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
		if m.nss[c[l]].kernel {
			continue // the image's name for the kernel's number (hostpids.go)
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

// reaperOf is who adopts the children of dying proc p (F5.2, the
// kernel's find_new_reaper): the nearest live child subreaper among p's
// ancestors in p's own pid namespace, else that namespace's init, else
// (level 0) the restorer, itself a subreaper.
func (m *model) reaperOf(p int) int {
	pr := &m.procs[p]
	n := m.nss[pr.ns]
	for q := pr.parent; q >= 0 && q != n.init && m.procs[q].ns == pr.ns; q = m.procs[q].parent {
		if m.procs[q].subreaper && m.procs[q].state == mAlive {
			return q
		}
	}
	if n.init >= 0 && n.init != p {
		return n.init
	}
	return Restorer
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
	if pr.kids == 0 {
		return nil
	}
	reaper := m.reaperOf(p)
	for i := range m.procs {
		if m.procs[i].parent == p && m.procs[i].state != mNone {
			m.saveProc(i)
			m.procs[i].parent, m.procs[i].parentTID = reaper, 0 // the reaper's leader while it lives
		}
	}
	if reaper >= 0 {
		m.saveProc(reaper)
		m.procs[reaper].kids += pr.kids
	}
	pr.kids = 0
	return nil
}
