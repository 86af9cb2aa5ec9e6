package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// unshareNS is the model of unshare(2) for the member kinds: each
// namespace is created once, by its first member.
func (m *model) unshareNS(pl *Plan, s *Step) error {
	a := &m.procs[s.Actor]
	m.saveProc(s.Actor)
	for k, id := range s.NS {
		if id == 0 {
			continue
		}
		if NSKindPid(k) {
			return fmt.Errorf("unshare of a pid namespace is OpSetPFC's")
		}
		if m.made[id] {
			return fmt.Errorf("%v namespace %d created twice", pstree.NSKind(k), id)
		}
	}
	// unshare(2) creates the user namespace first; it owns the others.
	owner := a.nsk[pstree.UserNS]
	if u := s.NS[pstree.UserNS]; u != 0 {
		if len(a.threads) > 0 {
			return fmt.Errorf("unshare user namespace %d by a task with threads: EINVAL", u)
		}
		ns := m.tr.Namespace(u)
		if ns.Parent != 0 && ns.Parent != owner {
			return fmt.Errorf("unshare user namespace %d from user namespace %d, its parent is %d", u, owner, ns.Parent)
		}
		if owner != m.own[pstree.UserNS] && (!m.mapped[owner] || a.credsIn != owner) {
			return fmt.Errorf("unshare user namespace %d inside user namespace %d with ids it does not map: EPERM", u, owner)
		}
		m.setMade(u)
		a.nsk[pstree.UserNS] = u
		owner = u
	}
	for k, id := range s.NS {
		if id == 0 || pstree.NSKind(k) == pstree.UserNS {
			continue
		}
		if want := m.tr.Namespace(id).Owner; want != 0 && want != owner {
			return fmt.Errorf("%v namespace %d would be owned by user namespace %d, the image says %d", pstree.NSKind(k), id, owner, want)
		}
		m.setMade(id)
		m.setOwner(id, owner)
		a.nsk[k] = id
	}
	return nil
}

// setnsNS is the model of setns(pidfd, flags): every kind joined must be
// the target's.
func (m *model) setnsNS(pl *Plan, s *Step) error {
	if s.Target < 0 || s.Target >= len(m.procs) || m.procs[s.Target].state != mAlive {
		return fmt.Errorf("setns through proc %d: not alive: ESRCH", s.Target)
	}
	a, t := &m.procs[s.Actor], &m.procs[s.Target]
	m.saveProc(s.Actor)
	for k, id := range s.NS {
		if id == 0 {
			continue
		}
		if t.nsk[k] != id {
			return fmt.Errorf("setns %v through %s: it is in %d, not %d", pstree.NSKind(k), pl.name(s.Target), t.nsk[k], id)
		}
		over := m.ownerOf(id)
		if pstree.NSKind(k) == pstree.UserNS {
			over = id
			if len(a.threads) > 0 {
				return fmt.Errorf("setns user %d by a task with threads: EINVAL", id)
			}
		}
		if !m.capable(a.nsk[pstree.UserNS], over) {
			return fmt.Errorf("setns %v %d: no capability in its user namespace %d from %d: EPERM", pstree.NSKind(k), id, over, a.nsk[pstree.UserNS])
		}
	}
	for k, id := range s.NS {
		if id != 0 && pstree.NSKind(k) != pstree.UserNS {
			a.nsk[k] = id
		}
	}
	if id := s.NS[pstree.UserNS]; id != 0 {
		// memberships joins a user namespace in a call of its own, after
		// the other kinds (setns(2) would check those against the new
		// credentials)
		a.nsk[pstree.UserNS] = id
	}
	return nil
}

// ownerOf is the user namespace owning namespace id (not a user one): the
// one it was created in, or the image's owner for one the restore did not
// create (ambient), or the restorer's own.
func (m *model) ownerOf(id pstree.NSID) pstree.NSID {
	if o, ok := m.owner[id]; ok {
		return o
	}
	if ns := m.tr.Namespace(id); ns != nil && ns.Owner != 0 && !m.tr.Namespace(ns.Owner).Ambient {
		return ns.Owner
	}
	return m.own[pstree.UserNS]
}

// capable says whether a builder in user namespace from (with the full
// capabilities every builder has in its own) has them in user namespace
// over: over is from or below it (the kernel's cap_capable walk).
func (m *model) capable(from, over pstree.NSID) bool {
	if from == m.own[pstree.UserNS] || over == 0 {
		return true
	}
	for id, n := over, 0; id != 0 && n < 64; n++ {
		if id == from {
			return true
		}
		ns := m.tr.Namespace(id)
		if ns == nil {
			return false
		}
		id = ns.Parent
	}
	return false
}

func (m *model) setOwner(id, owner pstree.NSID) {
	if m.journal {
		old, had := m.owner[id]
		m.undo = append(m.undo, func() {
			if had {
				m.owner[id] = old
			} else {
				delete(m.owner, id)
			}
		})
	}
	m.owner[id] = owner
}

// NSKindPid says whether kind k is handled by the pid machinery.
func NSKindPid(k int) bool {
	return pstree.NSKind(k) == pstree.PidNS || pstree.NSKind(k) == pstree.PidForChildrenNS
}

func (m *model) setMade(id pstree.NSID) {
	if m.journal {
		m.undo = append(m.undo, func() { delete(m.made, id) })
	}
	m.made[id] = true
}

// userMap is the model of the map writes: by a member of the parent user
// namespace, once, for a namespace the restore created.
func (m *model) userMap(pl *Plan, s *Step) error {
	u := s.NS[pstree.UserNS]
	t := &m.procs[s.Target]
	if s.Target < 0 || t.state != mAlive || t.nsk[pstree.UserNS] != u || !m.made[u] {
		return fmt.Errorf("maps of user ns %d: target is not a member of it", u)
	}
	if m.mapped[u] {
		return fmt.Errorf("maps of user ns %d written twice: EPERM", u)
	}
	parent := m.tr.Namespace(u).Parent
	if parent == 0 || m.tr.Namespace(parent).Ambient {
		parent = m.own[pstree.UserNS]
	}
	if w := m.procs[s.Actor].nsk[pstree.UserNS]; w != parent {
		return fmt.Errorf("maps of user ns %d written from user ns %d, not its parent %d: EPERM", u, w, parent)
	}
	if m.journal {
		m.undo = append(m.undo, func() { delete(m.mapped, u) })
	}
	m.mapped[u] = true
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
		// unshare(CLONE_NEWPID) makes the caller's user namespace the
		// owner
		if want := m.tr.Namespace(s.Into).Owner; want != 0 && want != a.nsk[pstree.UserNS] {
			return fmt.Errorf("unshare(CLONE_NEWPID): pid ns %d would be owned by user ns %d, the image says %d", s.Into, a.nsk[pstree.UserNS], want)
		}
		m.saveNS(s.Into)
		n.made = true
		n.owner = a.nsk[pstree.UserNS]
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
