package restorer

import (
	"fmt"
	"strings"

	"github.com/nsinit/nsinit/pstree"
)

// User namespaces are created like the other kinds (planner_namespaces.go), by
// their first member; right after the unshare a member of the parent user
// namespace writes the new one's setgroups, uid_map and gid_map
// (OpUserMap; the kernel wants the writer in the parent or in the
// namespace itself, with CAP_SETUID there). The image's maps are as the
// dumper saw them: the outside ids are in its (the restorer's) terms. A
// writer in the restorer's user namespace writes them as they are; a
// writer in a nested parent P sees outside ids in P's terms, so they are
// translated through P's map.

// userMap emits the map writes of user namespace u, whose first member c
// just created it.
func (pl *planner) userMap(c int, u pstree.NSID) error {
	ns := pl.tr().Namespace(u)
	if len(ns.UIDMap) == 0 && len(ns.GIDMap) == 0 {
		// Nobody wrote them: its members keep the ids they came in
		// with (taskCreds, which keeps any id a map lacks), and the kernel lets none of them create a
		// user namespace inside (create_user_ns wants the creator's
		// ids mapped), so nothing below needs them.
		return nil
	}
	parent := ns.Parent
	if parent == 0 || pl.tr().Namespace(parent).Ambient {
		parent = pl.m.own[pstree.UserNS]
	}
	w := pl.userMember(parent)
	if w < 0 {
		return noUserMember(parent, "user ns %d: no live member of its parent %d to write its maps", u, parent)
	}
	if _, _, err := userMapText(pl.plan, u); err != nil {
		return err
	}
	return pl.emit(Step{Op: OpUserMap, Actor: w, Target: c, NS: nsOne(pstree.UserNS, u)})
}

func nsOne(k pstree.NSKind, id pstree.NSID) pstree.NSSet {
	var s pstree.NSSet
	s[k] = id
	return s
}

// userMapText is what the writer writes to user namespace u's uid_map and
// gid_map. The writer is a member of u's parent when it writes (userMap),
// and the kernel reads the outside ids in the parent's terms: they are
// translated through the parent's map, not through the writer's image
// user namespace, which may lie further down (stages: the writer moves
// down after the write).
func userMapText(p *Plan, u pstree.NSID) (uidMap, gidMap string, err error) {
	ns := p.Tree.Namespace(u)
	var via *pstree.Namespace // u's parent, when not the restorer's
	if pa := ns.Parent; pa != 0 && !p.Tree.Namespace(pa).Ambient {
		via = p.Tree.Namespace(pa)
	}
	text := func(m []pstree.IDMapEntry, xlate func(uint32) (uint32, bool)) (string, error) {
		var b strings.Builder
		for _, e := range m {
			out := e.Outside
			if via != nil {
				first, ok1 := xlate(e.Outside)
				last, ok2 := xlate(e.Outside + e.Count - 1)
				if !ok1 || !ok2 || last-first != e.Count-1 {
					return "", fmt.Errorf("user ns %d: map line %d %d %d is not one range in its parent's ids: %w", u, e.Inside, e.Outside, e.Count, ErrUnsupported)
				}
				out = first
			}
			fmt.Fprintf(&b, "%d %d %d\n", e.Inside, out, e.Count)
		}
		return b.String(), nil
	}
	// One map of the two may be missing (its write failed, or nobody
	// tried): "" writes nothing.
	var xu, xg func(uint32) (uint32, bool)
	if via != nil {
		xu, xg = via.MapUID, via.MapGID
	}
	if uidMap, err = text(ns.UIDMap, xu); err != nil {
		return "", "", err
	}
	if gidMap, err = text(ns.GIDMap, xg); err != nil {
		return "", "", err
	}
	return uidMap, gidMap, nil
}

// taskCreds are the ids an exec payload sets, in the task's own user
// namespace (the image has them as the dumper saw them), and whether it
// may call setgroups there.
func taskCreds(p *Plan, ti int) (uid, gid [3]uint32, groups []uint32, setgroups bool, err error) {
	t := &p.Tree.Tasks[ti]
	c := t.Creds
	uid, gid, groups, setgroups = [3]uint32{c.UID, c.EUID, c.SUID}, [3]uint32{c.GID, c.EGID, c.SGID}, c.Groups, true
	ns := p.Tree.Namespace(t.NS[pstree.UserNS])
	if ns == nil || ns.Ambient {
		setgroups = !p.Options.Features.SetgroupsDenied
		return
	}
	bad := func(what string, v uint32) error {
		return fmt.Errorf("task %v: %s %d is not mapped in its user ns %d: %w", t.PIDs, what, v, ns.ID, ErrUnsupported)
	}
	// An id the namespace does not map is one the task kept from its
	// creator (maps written without it): nothing inside can set it, the
	// builder keeps its own (keptIDs says when that is the image's).
	for i := range uid {
		var ok bool
		if uid[i], ok = ns.MapUID(uid[i]); !ok {
			uid[i] = keepID
		}
		if gid[i], ok = ns.MapGID(gid[i]); !ok {
			gid[i] = keepID
		}
	}
	setgroups = ns.SetgroupsAllowed && len(ns.GIDMap) > 0 // setgroups(2) needs a gid map
	groups = nil
	for _, g := range c.Groups {
		if in, ok := ns.MapGID(g); ok {
			groups = append(groups, in)
		} else if setgroups {
			return uid, gid, nil, false, bad("group", g)
		}
	}
	return
}

// builderIDs are the ids a builder holds in the restorer's terms once it
// switched them (OpSetCreds) or was cloned by a builder that had: a clone
// copies its caller's credentials. switched is false for a builder that
// has the restorer's own.
type builderIDs struct {
	uid, gid uint32
	switched bool
}

// switchedIDs follows p's OpSetCreds steps through the clones, for every
// proc.
func switchedIDs(p *Plan) []builderIDs {
	ids := make([]builderIDs, len(p.Procs))
	for i := range p.Steps {
		s := &p.Steps[i]
		switch {
		case s.Op == OpClone && s.Actor != Restorer:
			ids[s.Target] = ids[s.Actor]
		case s.Op == OpSetCreds:
			// The step's ids are its user namespace's, mapped there
			// (nestedCreds): their outside values are the restorer's.
			u := s.NS[pstree.UserNS]
			uid, _ := hostUID(p.Tree, u, uint32(s.Arg))
			gid := uint32(s.Arg2)
			if ns := p.Tree.Namespace(u); ns != nil && !ns.Ambient {
				gid, _ = inverse(ns.GIDMap, gid)
			}
			ids[s.Actor] = builderIDs{uid, gid, true}
		}
	}
	return ids
}

// keepID in the ids taskCreds returns leaves that id as the builder has
// it (-1 to setresuid and setresgid).
const keepID = ^uint32(0)

// keptIDs checks the ids task ti keeps from its builder (taskCreds)
// against the builder's own, given as [3]uint32 real, effective, saved
// for uid and gid: a builder that never switched ids (OpSetCreds) has the
// restorer's.
func keptIDs(p *Plan, ti int, uids, gids [3]uint32) error {
	uid, gid, _, _, err := taskCreds(p, ti)
	if err != nil {
		return err
	}
	t := &p.Tree.Tasks[ti]
	want := [2][3]uint32{{t.Creds.UID, t.Creds.EUID, t.Creds.SUID}, {t.Creds.GID, t.Creds.EGID, t.Creds.SGID}}
	for k, ids := range [2][3]uint32{uid, gid} {
		have := [2][3]uint32{uids, gids}[k]
		for i, v := range ids {
			if v == keepID && have[i] != want[k][i] {
				return fmt.Errorf("task %v: %s %d is not mapped in its user ns %d, and only its creator's %d can be kept there: %w",
					t.PIDs, [2]string{"uid", "gid"}[k], want[k][i], t.NS[pstree.UserNS], have[i], ErrUnsupported)
			}
		}
	}
	return nil
}

// nestedCreds emits c's switch to ids its user namespace cur maps, before
// it creates user namespace u inside: the creator's uid becomes u's owner,
// so the image's owner uid when cur maps it, else cur's root.
func (pl *planner) nestedCreds(c int, cur, u pstree.NSID) error {
	ns := pl.tr().Namespace(cur)
	uid, ok := ns.MapUID(pl.tr().Namespace(u).OwnerUID)
	if !ok {
		uid = 0
		if _, ok = inverse(ns.UIDMap, 0); !ok {
			return fmt.Errorf("user ns %d maps neither uid 0 nor the owner of user ns %d: %w", cur, u, ErrUnsupported)
		}
	}
	gid := uint32(0)
	if _, ok := inverse(ns.GIDMap, 0); !ok {
		if len(ns.GIDMap) == 0 {
			return fmt.Errorf("user ns %d has no gid map: %w", cur, ErrUnsupported)
		}
		gid = ns.GIDMap[0].Inside
	}
	st := Step{Op: OpSetCreds, Actor: c, Target: -1, Arg: int(uid), Arg2: int(gid)}
	st.NS[pstree.UserNS] = cur // the ids are cur's
	return pl.emit(st)
}

// hostUID is the uid of the restorer's user namespace that uid inside of
// user namespace u is (the image's maps are its dumper's view); ok is false
// when u does not map it.
func hostUID(tr *pstree.Tree, u pstree.NSID, inside uint32) (uint32, bool) {
	ns := tr.Namespace(u)
	if ns == nil || ns.Ambient {
		return inside, true
	}
	return inverse(ns.UIDMap, inside)
}

// inverse maps an inside id back to the outside.
func inverse(m []pstree.IDMapEntry, inside uint32) (uint32, bool) {
	for _, e := range m {
		if inside >= e.Inside && uint64(inside) < uint64(e.Inside)+uint64(e.Count) {
			return e.Outside + (inside - e.Inside), true
		}
	}
	return 0, false
}
