// Package check compares an image with a live tree, strictly: it is how
// restore tests prove a restore exact. Tasks are matched by their level-0
// pid; namespaces are compared by shape (which tasks share one, the
// hierarchy of pid and user namespaces and who owns what), never by id or
// inode.
package check

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/pstree"
)

// Difference is one way the live tree differs from the image.
type Difference struct {
	PID   int    // level-0 pid of the task concerned, 0 for the tree
	What  string // the property: "pids", "ppid", "sid", "net namespace", ...
	Image string // the image's value
	Live  string // the live value
}

func (d Difference) String() string {
	who := "tree"
	if d.PID != 0 {
		who = fmt.Sprintf("pid %d", d.PID)
	}
	return fmt.Sprintf("%s: %s: image %s, live %s", who, d.What, d.Image, d.Live)
}

// ReadLive reads the live tree rooted at level-0 pid root, through the
// dump's reader, without freezing it.
func ReadLive(root int) (*pstree.Tree, error) { return dump.ReadLive(root, "") }

// Compare lists every difference between img and live; none means equal.
func Compare(img, live *pstree.Tree) []Difference { return CompareWith(img, live, Options{}) }

// Options relax Compare for trees in a known condition.
type Options struct {
	// LeftStopped: the live tree was left stopped by `dump
	// --leave-stopped` (ptrace: SIGSTOP, state T), so a task or thread
	// live in the image may be stopped. A stopped one of the image must
	// still be stopped, a zombie a zombie.
	LeftStopped bool
	// ShellJob: the tree was restored with --shell-job, so the session and
	// group its root had from outside the tree (a shell's) are the live
	// root's instead. Every task of the image in them must be in the live
	// root's; every other session and group is compared as it is.
	ShellJob bool
	// HostPIDs: the tree was restored with kernel-chosen level-0 pids;
	// the image's level-0 numbers are renamed through this pid map
	// (image -> live, check/pidmap.go) before comparing.
	HostPIDs map[int]int
}

// CompareWith is Compare with options.
func CompareWith(img, live *pstree.Tree, o Options) []Difference {
	if o.HostPIDs != nil {
		img = renameHostPIDs(img, o.HostPIDs)
	}
	if o.LeftStopped {
		live = unstop(img, live)
	}
	if o.ShellJob {
		img = renameOutsideLeaders(img, live)
	}
	c := &comparer{img: img, live: live, nsMap: map[pstree.NSID]pstree.NSID{}, nsRev: map[pstree.NSID]pstree.NSID{}}
	c.tasks()
	c.namespaces()
	return c.diffs
}

type comparer struct {
	img, live    *pstree.Tree
	diffs        []Difference
	nsMap, nsRev map[pstree.NSID]pstree.NSID // image <-> live namespace ids
}

// unstop returns a copy of live where the tasks and threads that are
// stopped, and live in img, are live.
func unstop(img, live *pstree.Tree) *pstree.Tree {
	cp := *live
	cp.Tasks = slices.Clone(live.Tasks)
	for i := range cp.Tasks {
		lt := &cp.Tasks[i]
		it := img.Task(lt.PIDs[0])
		if it == nil {
			continue
		}
		if lt.State == pstree.Stopped && it.State == pstree.Live {
			lt.State = pstree.Live
		}
		lt.Threads = slices.Clone(lt.Threads)
		for j := range lt.Threads {
			th := &lt.Threads[j]
			for _, ith := range it.Threads {
				if slices.Equal(ith.TIDs, th.TIDs) && th.State == pstree.Stopped && ith.State == pstree.Live {
					th.State = pstree.Live
				}
			}
		}
	}
	return &cp
}

// agent says whether the image task of level-0 pid is an nsinit agent.
func (c *comparer) agent(pid int) bool {
	t := c.img.Task(pid)
	return t != nil && t.Agent
}

func (c *comparer) add(pid int, what string, img, live any) {
	c.diffs = append(c.diffs, Difference{PID: pid, What: what, Image: fmt.Sprint(img), Live: fmt.Sprint(live)})
}

func (c *comparer) tasks() {
	for i := range c.img.Tasks {
		it := &c.img.Tasks[i]
		lt := c.live.Task(it.PIDs[0])
		if lt == nil {
			c.add(it.PIDs[0], "task", fmt.Sprintf("%v %v", it.PIDs, it.State), "missing")
			continue
		}
		pid := it.PIDs[0]
		if !slices.Equal(it.PIDs, lt.PIDs) {
			c.add(pid, "pids", it.PIDs, lt.PIDs)
		}
		if i > 0 && it.PPID != lt.PPID {
			c.add(pid, "ppid", it.PPID, lt.PPID)
		} else if i > 0 && it.ParentTID != 0 && lt.ParentTID != 0 && it.ParentTID != lt.ParentTID && !c.agent(it.PPID) {
			// Which of its parent's threads it is a child of (both
			// recorded: not in images of minor < 4; an agent's threads
			// are its runtime's, not compared). Only the stopped payload
			// restores threads, so only it can match a thread other than
			// the leader.
			c.add(pid, "parent thread", it.ParentTID, lt.ParentTID)
		}
		if !slices.Equal(it.PGIDs, lt.PGIDs) {
			c.add(pid, "pgids", it.PGIDs, lt.PGIDs)
		}
		if !slices.Equal(it.SIDs, lt.SIDs) {
			c.add(pid, "sids", it.SIDs, lt.SIDs)
		}
		if it.State != lt.State {
			c.add(pid, "state", it.State, lt.State)
		}
		if it.ExitStatus != lt.ExitStatus {
			c.add(pid, "exit status", fmt.Sprintf("%#x", it.ExitStatus), fmt.Sprintf("%#x", lt.ExitStatus))
		}
		if it.Agent != lt.Agent {
			c.add(pid, "agent", it.Agent, lt.Agent)
		}
		if c.img.SubreapersRecorded && c.live.SubreapersRecorded && it.ChildSubreaper != lt.ChildSubreaper {
			c.add(pid, "child subreaper", it.ChildSubreaper, lt.ChildSubreaper)
		}
		// The command name, when the image has one (an agent's too:
		// restore execs `nsinit agent` under the recorded name).
		if it.Comm != "" && it.Comm != lt.Comm {
			c.add(pid, "comm", fmt.Sprintf("%q", it.Comm), fmt.Sprintf("%q", lt.Comm))
		}
		// An nsinit agent's threads belong to its Go runtime, which
		// makes them as it likes: they are not restored, so not compared.
		if !it.Agent {
			c.threads(pid, it.Threads, lt.Threads)
		}
		for _, k := range pstree.AllNSKinds() {
			c.sameNS(pid, k, it.NS[k], lt.NS[k])
		}
		// Zombies too: /proc/PID/status shows a zombie's credentials
		// until it is reaped, and the image has them. An agent is
		// exec'd as `nsinit agent` by a root builder with the image's
		// ids and sets, so it matches a root agent's image.
		c.creds(pid, &it.Creds, &lt.Creds)
	}
	if len(c.live.Tasks) > 0 && len(c.img.Tasks) > 0 && c.live.Tasks[0].PIDs[0] != c.img.Tasks[0].PIDs[0] {
		c.add(0, "root", c.img.Tasks[0].PIDs, c.live.Tasks[0].PIDs)
	}
	for _, lt := range c.live.Tasks {
		if c.img.Task(lt.PIDs[0]) == nil {
			c.add(lt.PIDs[0], "task", "missing", fmt.Sprintf("%v %v", lt.PIDs, lt.State))
		}
	}
}

// creds compares ids, groups and the five capability sets (as the kernel
// shows them: hex).
func (c *comparer) creds(pid int, a, b *pstree.Creds) {
	ids := []struct {
		what string
		a, b uint32
	}{
		{"uid", a.UID, b.UID}, {"euid", a.EUID, b.EUID}, {"suid", a.SUID, b.SUID}, {"fsuid", a.FSUID, b.FSUID},
		{"gid", a.GID, b.GID}, {"egid", a.EGID, b.EGID}, {"sgid", a.SGID, b.SGID}, {"fsgid", a.FSGID, b.FSGID},
	}
	for _, id := range ids {
		if id.a != id.b {
			c.add(pid, id.what, id.a, id.b)
		}
	}
	if !slices.Equal(a.Groups, b.Groups) {
		c.add(pid, "groups", a.Groups, b.Groups)
	}
	caps := []struct {
		what string
		a, b uint64
	}{
		{"cap_inh", a.CapInh, b.CapInh}, {"cap_prm", a.CapPrm, b.CapPrm}, {"cap_eff", a.CapEff, b.CapEff},
		{"cap_bnd", a.CapBnd, b.CapBnd}, {"cap_amb", a.CapAmb, b.CapAmb},
	}
	for _, cp := range caps {
		if cp.a != cp.b {
			c.add(pid, cp.what, fmt.Sprintf("%016x", cp.a), fmt.Sprintf("%016x", cp.b))
		}
	}
}

func (c *comparer) threads(pid int, img, live []pstree.Thread) {
	key := func(ts []pstree.Thread) []string {
		var out []string
		for _, t := range ts {
			out = append(out, fmt.Sprintf("%v:%v", t.TIDs, t.State))
		}
		slices.Sort(out)
		return out
	}
	if a, b := key(img), key(live); !slices.Equal(a, b) {
		c.add(pid, "threads", a, b)
		return
	}
	for _, it := range img {
		for _, lt := range live {
			if slices.Equal(it.TIDs, lt.TIDs) && it.Comm != "" && it.Comm != lt.Comm {
				c.add(pid, fmt.Sprintf("comm of thread %v", it.TIDs), fmt.Sprintf("%q", it.Comm), fmt.Sprintf("%q", lt.Comm))
			}
		}
	}
}

// sameNS records that image namespace a is live namespace b; a namespace
// met twice with different partners is a difference in shape.
func (c *comparer) sameNS(pid int, k pstree.NSKind, a, b pstree.NSID) {
	if a == 0 || b == 0 {
		if a != b {
			c.add(pid, k.String()+" namespace", known(a), known(b))
		}
		return
	}
	if !c.match(a, b) {
		c.add(pid, k.String()+" namespace", c.sharers(c.img, k, a), c.sharers(c.live, k, b))
	}
}

// match pairs image namespace a with live namespace b the first time either
// is met, and reports whether they are each other's partners. The two maps
// are only ever set together.
func (c *comparer) match(a, b pstree.NSID) bool {
	ma, okA := c.nsMap[a]
	_, okB := c.nsRev[b]
	if !okA && !okB {
		c.nsMap[a], c.nsRev[b] = b, a
		return true
	}
	return okA && ma == b
}

func known(id pstree.NSID) string {
	if id == 0 {
		return "unknown"
	}
	return "known"
}

// sharers describes a namespace by the tasks in it.
func (c *comparer) sharers(tr *pstree.Tree, k pstree.NSKind, id pstree.NSID) string {
	var pids []int
	for _, t := range tr.Tasks {
		if t.NS[k] == id {
			pids = append(pids, t.PIDs[0])
		}
	}
	return fmt.Sprintf("shared by %v", pids)
}

// namespaces compares, for every pair of matched namespaces, the pid
// namespace level and the parent and owner (which must match too).
func (c *comparer) namespaces() {
	done := map[pstree.NSID]bool{}
	for len(done) < len(c.nsMap) { // related may match more namespaces
		var ids []pstree.NSID
		for a := range c.nsMap {
			if !done[a] {
				ids = append(ids, a)
				done[a] = true
			}
		}
		slices.Sort(ids)
		c.namespacePairs(ids)
	}
}

func (c *comparer) namespacePairs(ids []pstree.NSID) {
	for _, a := range ids {
		na, nb := c.img.Namespace(a), c.live.Namespace(c.nsMap[a])
		if na == nil || nb == nil {
			continue
		}
		what := fmt.Sprintf("%v namespace of pid %d", na.Kind, c.firstTask(c.img, a))
		if na.Level != nb.Level {
			c.add(0, what+": level", na.Level, nb.Level)
		}
		c.related(what+": parent", na.Parent, nb.Parent)
		c.related(what+": owner", na.Owner, nb.Owner)
		if na.Ambient != nb.Ambient {
			c.add(0, what+": ambient (the checker's own)", na.Ambient, nb.Ambient)
		}
		if na.Ambient && nb.Ambient {
			// The machine's own namespace: its hostname, interfaces and
			// maps are the machine's, which a restore never sets (and
			// which differ on another machine).
			continue
		}
		if na.Hostname != nb.Hostname || na.Domainname != nb.Domainname {
			c.add(0, what+": hostname/domainname", na.Hostname+"/"+na.Domainname, nb.Hostname+"/"+nb.Domainname)
		}
		if na.Kind == pstree.NetNS {
			c.netContents(what, na, nb)
		}
		if na.Kind == pstree.MntNS {
			c.mountContents(what, na, nb) // check/mounts.go
		}
		if na.Kind == pstree.UserNS {
			if fmt.Sprint(na.UIDMap) != fmt.Sprint(nb.UIDMap) {
				c.add(0, what+": uid_map", na.UIDMap, nb.UIDMap)
			}
			if fmt.Sprint(na.GIDMap) != fmt.Sprint(nb.GIDMap) {
				c.add(0, what+": gid_map", na.GIDMap, nb.GIDMap)
			}
		}
	}
}

// related compares two references (parent, owner): they must name matched
// namespaces, or both be unknown; a namespace seen only as a reference is
// matched here for the first time.
func (c *comparer) related(what string, a, b pstree.NSID) {
	if a == 0 || b == 0 {
		if a != b {
			c.add(0, what, known(a), known(b))
		}
		return
	}
	if !c.match(a, b) {
		c.add(0, what, fmt.Sprintf("namespace %d", a), fmt.Sprintf("a different one (%d)", b))
	}
}

func (c *comparer) firstTask(tr *pstree.Tree, id pstree.NSID) int {
	for _, t := range tr.Tasks {
		for _, n := range t.NS {
			if n == id {
				return t.PIDs[0]
			}
		}
	}
	return 0
}

// renameOutsideLeaders returns a copy of img in which the level-0 session
// and group ids its root had from outside the tree (led by no task of the
// image) are the live root's.
func renameOutsideLeaders(img, live *pstree.Tree) *pstree.Tree {
	if len(img.Tasks) == 0 || len(live.Tasks) == 0 {
		return img
	}
	root, lroot := &img.Tasks[0], &live.Tasks[0]
	outside := func(id int) bool { return id != root.PID() && img.Task(id) == nil }
	sid, pgid := root.SIDs[0], root.PGIDs[0]
	if !outside(sid) && !outside(pgid) {
		return img
	}
	cp := *img
	cp.Tasks = slices.Clone(img.Tasks)
	for i := range cp.Tasks {
		t := &cp.Tasks[i]
		t.SIDs, t.PGIDs = slices.Clone(t.SIDs), slices.Clone(t.PGIDs)
		if outside(sid) && t.SIDs[0] == sid {
			t.SIDs[0] = lroot.SIDs[0]
		}
		if outside(pgid) && t.PGIDs[0] == pgid {
			t.PGIDs[0] = lroot.PGIDs[0]
		}
	}
	return &cp
}
