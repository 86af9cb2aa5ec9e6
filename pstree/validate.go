package pstree

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid process tree")

// Validate is the one check between untrusted bytes and the model: the image
// decoder calls it on every image, the encoder before writing one, and the
// restorer's planner before planning. What it accepts can be used without
// re-checking its shape, and it runs in time linear in the size of the tree
// (every lookup goes through a map), within the limits of limits.go:
//
//   - namespaces: ids unique and non-zero, known kinds, every parent and
//     owner present, parents of the same kind, owners user namespaces (a
//     user namespace's owner is its parent), parent chains acyclic and no
//     deeper than the kernel nests them, pid namespace levels one below
//     their parent's;
//   - tasks: at least one, pids in 1..MaxPID, 1..MaxLevel+1 levels, level
//     equal to the level of the task's pid namespace, pids and tids unique
//     in every pid namespace, pgid/sid vectors as long as the pid vector,
//     parents listed before children and in an ancestor (or the same) pid
//     namespace, a parent thread that is one of the parent's threads, exit status only on zombies and a possible wait status;
//   - what restore hands to the kernel as C strings (exe, cwd, argv, env,
//     command names, hostnames, interface names) has no NUL byte, which
//     would silently cut it; ids are not (uid_t)-1; the root is "/" (restore
//     re-creates no other);
//   - namespace contents on the right kind only (hostnames on uts, maps on
//     user, links and routes on net namespaces that are not ambient), with
//     maps the kernel would accept, valid interface names, addresses and
//     routes, and veth pairs that point at each other.
func Validate(tr *Tree) error {
	if tr == nil {
		return fmt.Errorf("%w: nil tree", ErrInvalid)
	}
	// The dumping kernel's release is at most utsname's 64 bytes.
	if len(tr.Kernel) > 64 || strings.ContainsFunc(tr.Kernel, func(r rune) bool { return r < ' ' || r > '~' }) {
		return fmt.Errorf("%w: kernel release %q: more than 64 bytes or not printable", ErrInvalid, tr.Kernel)
	}
	if tr.PidMax < 0 || tr.PidMax > MaxPID {
		return fmt.Errorf("%w: pid_max %d out of range 0..%d", ErrInvalid, tr.PidMax, MaxPID)
	}
	ix, err := validateNamespaces(tr)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := validateTasks(tr, ix); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// nsIndex is what the task checks look namespaces up in.
type nsIndex struct {
	byID map[NSID]*Namespace
	// chain holds, for each pid namespace, its ancestors by level: chain[id][l]
	// is the pid namespace of level l above (or equal to) id.
	chain map[NSID][]NSID
}

func validateNamespaces(tr *Tree) (*nsIndex, error) {
	if n := len(tr.Namespaces); n > MaxNamespaces {
		return nil, fmt.Errorf("%d namespaces, more than %d", n, MaxNamespaces)
	}
	ix := &nsIndex{byID: make(map[NSID]*Namespace, len(tr.Namespaces)), chain: map[NSID][]NSID{}}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		if err := validateNamespace(i, ns); err != nil {
			return nil, err
		}
		if _, dup := ix.byID[ns.ID]; dup {
			return nil, fmt.Errorf("namespace %d: duplicate id %d", i, ns.ID)
		}
		ix.byID[ns.ID] = ns
	}
	if err := validatePeers(tr, ix.byID); err != nil {
		return nil, err
	}
	// In slice order, so that the first error is the same on every run.
	for i := range tr.Namespaces {
		if err := validateRefs(&tr.Namespaces[i], ix.byID); err != nil {
			return nil, err
		}
		if err := validateMountRefs(&tr.Namespaces[i], ix.byID); err != nil {
			return nil, err
		}
	}
	if err := validateChains(tr, ix.byID); err != nil {
		return nil, err
	}
	for i := range tr.Namespaces {
		if ns := &tr.Namespaces[i]; ns.Kind == PidNS {
			ix.pidChain(ns)
		}
	}
	return ix, nil
}

// validateNamespace checks what one namespace says about itself.
func validateNamespace(i int, ns *Namespace) error {
	if ns.ID == 0 {
		return fmt.Errorf("namespace %d: id 0", i)
	}
	if ns.Kind < 0 || ns.Kind >= numNSKinds || ns.Kind == PidForChildrenNS {
		return fmt.Errorf("namespace %d: bad kind %v", ns.ID, ns.Kind)
	}
	if ns.Level < 0 || ns.Level > MaxLevel {
		return fmt.Errorf("namespace %d: level %d out of range 0..%d", ns.ID, ns.Level, MaxLevel)
	}
	if ns.Kind != PidNS && ns.Level != 0 {
		return fmt.Errorf("namespace %d: level set on a %v namespace", ns.ID, ns.Kind)
	}
	if ns.LastPID < 0 || ns.LastPID > MaxPID {
		return fmt.Errorf("namespace %d: last pid %d out of range 0..%d", ns.ID, ns.LastPID, MaxPID)
	}
	if err := validateContents(ns); err != nil {
		return fmt.Errorf("%v namespace %d: %w", ns.Kind, ns.ID, err)
	}
	return nil
}

// validateRefs checks that a namespace's parent and owner exist and have
// the right kind.
func validateRefs(ns *Namespace, byID map[NSID]*Namespace) error {
	if ns.Parent != 0 {
		p, ok := byID[ns.Parent]
		if !ok {
			return fmt.Errorf("%v namespace %d: parent %d missing", ns.Kind, ns.ID, ns.Parent)
		}
		if ns.Kind != PidNS && ns.Kind != UserNS {
			return fmt.Errorf("namespace %d: %v namespaces have no parent", ns.ID, ns.Kind)
		}
		if p.Kind != ns.Kind {
			return fmt.Errorf("%v namespace %d: parent %d is a %v namespace", ns.Kind, ns.ID, p.ID, p.Kind)
		}
		if ns.Kind == PidNS && p.Level != ns.Level-1 {
			return fmt.Errorf("pid namespace %d at level %d: parent %d at level %d", ns.ID, ns.Level, p.ID, p.Level)
		}
	} else if ns.Kind == PidNS && ns.Level != 0 {
		// The dump sees every pid namespace from level 0 down.
		return fmt.Errorf("pid namespace %d at level %d has no parent", ns.ID, ns.Level)
	}
	if ns.Owner == 0 {
		return nil
	}
	o, ok := byID[ns.Owner]
	if !ok {
		return fmt.Errorf("%v namespace %d: owner %d missing", ns.Kind, ns.ID, ns.Owner)
	}
	if o.Kind != UserNS {
		return fmt.Errorf("%v namespace %d: owner %d is a %v namespace", ns.Kind, ns.ID, o.ID, o.Kind)
	}
	// NS_GET_USERNS of a user namespace is its parent, hidden exactly when
	// NS_GET_PARENT is: so owner chains are parent chains.
	if ns.Kind == UserNS && ns.Owner != ns.Parent {
		return fmt.Errorf("user namespace %d: owner %d is not its parent %d", ns.ID, ns.Owner, ns.Parent)
	}
	return nil
}

// validateChains refuses a cycle of parents (a user namespace that is its
// own ancestor) and a user namespace chain longer than the kernel nests
// them, visiting every namespace once: a walk stops at the first namespace
// whose depth is known. (Pid namespace chains are bounded by their levels.)
func validateChains(tr *Tree, byID map[NSID]*Namespace) error {
	const walking = -1
	depth := make(map[NSID]int, len(byID)) // namespaces above it, itself included
	var path []NSID
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		path = path[:0]
		id := ns.ID
		for ; id != 0 && depth[id] == 0; id = byID[id].Parent {
			depth[id] = walking
			path = append(path, id)
		}
		if id != 0 && depth[id] == walking {
			return fmt.Errorf("%v namespace %d: parent chain has a cycle through namespace %d", ns.Kind, ns.ID, id)
		}
		d := depth[id] // 0 when the chain ends at 0
		for j := len(path) - 1; j >= 0; j-- {
			d++
			depth[path[j]] = d
		}
		if ns.Kind == UserNS && depth[ns.ID] > MaxLevel+1 {
			return fmt.Errorf("user namespace %d: %d nested user namespaces, more than %d", ns.ID, depth[ns.ID], MaxLevel+1)
		}
	}
	return nil
}

// pidChain fills and returns ix.chain for pid namespace ns, whose parents
// are known to exist one level up each (validateRefs), so the recursion is
// at most MaxLevel deep.
func (ix *nsIndex) pidChain(ns *Namespace) []NSID {
	if c, ok := ix.chain[ns.ID]; ok {
		return c
	}
	var c []NSID
	if ns.Parent != 0 {
		up := ix.pidChain(ix.byID[ns.Parent])
		c = append(make([]NSID, 0, len(up)+1), up...)
	}
	c = append(c, ns.ID)
	ix.chain[ns.ID] = c
	return c
}

type levelPID struct {
	ns  NSID
	pid int
}

// taskChecker carries what the task checks have seen so far.
type taskChecker struct {
	tr    *Tree
	ix    *nsIndex
	index map[int]int      // level-0 pid -> task index
	used  map[levelPID]int // every pid or tid, keyed by the pid namespace of its level -> level-0 pid of its task
	// threadOf: level-0 tid of every non-leader thread -> level-0 pid of
	// its task
	threadOf map[int]int
}

func validateTasks(tr *Tree, ix *nsIndex) error {
	if len(tr.Tasks) == 0 {
		return errors.New("no tasks")
	}
	if n := len(tr.Tasks); n > MaxTasks {
		return fmt.Errorf("%d tasks, more than %d", n, MaxTasks)
	}
	threads := 0
	for i := range tr.Tasks {
		if threads += len(tr.Tasks[i].Threads); threads > MaxThreads {
			return fmt.Errorf("more than %d threads", MaxThreads)
		}
	}
	c := &taskChecker{tr: tr, ix: ix, index: make(map[int]int, len(tr.Tasks)), used: make(map[levelPID]int, len(tr.Tasks)+threads),
		threadOf: make(map[int]int, threads)}
	for i := range tr.Tasks {
		if err := c.task(i); err != nil {
			return err
		}
	}
	return nil
}

// task checks task i, whose parent is among the tasks already checked.
func (c *taskChecker) task(i int) error {
	t := &c.tr.Tasks[i]
	if len(t.PIDs) == 0 || len(t.PIDs) > MaxLevel+1 {
		return fmt.Errorf("task %d: %d pid levels, want 1..%d", i, len(t.PIDs), MaxLevel+1)
	}
	who := fmt.Sprintf("task %d (pid %d)", i, t.PIDs[0])
	if _, dup := c.index[t.PIDs[0]]; dup {
		return fmt.Errorf("%s: duplicate pid", who)
	}
	if err := c.nsSet(who, t); err != nil {
		return err
	}
	chain := c.ix.chain[t.NS[PidNS]]
	if err := c.claim(who, t.PIDs, chain); err != nil {
		return err
	}
	if err := validateGroups(who, t); err != nil {
		return err
	}
	if err := validateState(who, t.State, t.ExitStatus); err != nil {
		return err
	}
	if err := validateComm(who, t.Comm); err != nil {
		return err
	}
	if err := validateCreds(who, &t.Creds); err != nil {
		return err
	}
	if err := validateExec(who, t); err != nil {
		return err
	}
	if t.ChildSubreaper && !c.tr.SubreapersRecorded {
		return fmt.Errorf("%s: child subreaper in an image that records none", who)
	}
	for j := range t.Threads {
		if err := c.thread(fmt.Sprintf("%s thread %d", who, j), t, &t.Threads[j], chain); err != nil {
			return err
		}
	}
	if err := c.parent(who, i, t, chain); err != nil {
		return err
	}
	c.index[t.PIDs[0]] = i
	return nil
}

func (c *taskChecker) thread(who string, t *Task, th *Thread, chain []NSID) error {
	if err := validateComm(who, th.Comm); err != nil {
		return err
	}
	if len(th.TIDs) != len(t.PIDs) {
		return fmt.Errorf("%s: %d tid levels, task has %d", who, len(th.TIDs), len(t.PIDs))
	}
	if th.State < Live || th.State > Zombie {
		return fmt.Errorf("%s: bad state %d", who, th.State)
	}
	if err := c.claim(who, th.TIDs, chain); err != nil {
		return err
	}
	c.threadOf[th.TIDs[0]] = t.PIDs[0]
	return nil
}

// parent checks that task i's parent is listed before it, in its own pid
// namespace or an ancestor of it.
func (c *taskChecker) parent(who string, i int, t *Task, chain []NSID) error {
	if i == 0 {
		if t.PPID != 0 || t.ParentTID != 0 {
			return fmt.Errorf("%s: the root's ppid and parent thread must be 0, got %d and %d", who, t.PPID, t.ParentTID)
		}
		return nil
	}
	pi, ok := c.index[t.PPID]
	if !ok {
		return fmt.Errorf("%s: parent %d is not listed before it", who, t.PPID)
	}
	if t.ParentTID != 0 && t.ParentTID != t.PPID && c.threadOf[t.ParentTID] != t.PPID {
		return fmt.Errorf("%s: parent thread %d is not a thread of its parent %d", who, t.ParentTID, t.PPID)
	}
	p := &c.tr.Tasks[pi]
	if t.Level() < p.Level() {
		return fmt.Errorf("%s: at level %d, above its parent %d at level %d", who, t.Level(), p.PIDs[0], p.Level())
	}
	if chain[p.Level()] != p.NS[PidNS] {
		return fmt.Errorf("%s: pid namespace %d is not below its parent's %d", who, t.NS[PidNS], p.NS[PidNS])
	}
	return nil
}

// claim records ids (a task's pids or a thread's tids, outermost first) in
// the pid namespace of each level (chain, as long as ids).
func (c *taskChecker) claim(who string, ids []int, chain []NSID) error {
	for l, id := range ids {
		if id <= 0 || id > MaxPID {
			return fmt.Errorf("%s: pid %d at level %d out of range 1..%d", who, id, l, MaxPID)
		}
		k := levelPID{chain[l], id}
		if prev, dup := c.used[k]; dup {
			return fmt.Errorf("%s: pid %d at level %d already used by task %d", who, id, l, prev)
		}
		c.used[k] = ids[0]
	}
	return nil
}

// nsSet checks that every namespace a task names exists with the right
// kind, and that its pid namespace has its level.
func (c *taskChecker) nsSet(who string, t *Task) error {
	for k, id := range t.NS {
		if id == 0 {
			continue
		}
		ns, ok := c.ix.byID[id]
		if !ok {
			return fmt.Errorf("%s: %v namespace %d missing", who, NSKind(k), id)
		}
		want := NSKind(k)
		if want == PidForChildrenNS {
			want = PidNS
		}
		if ns.Kind != want {
			return fmt.Errorf("%s: %v namespace %d is a %v namespace", who, NSKind(k), id, ns.Kind)
		}
	}
	pidns, ok := c.ix.byID[t.NS[PidNS]]
	if !ok {
		return fmt.Errorf("%s: no pid namespace", who)
	}
	if pidns.Level != t.Level() {
		return fmt.Errorf("%s: %d pid levels but its pid namespace %d is at level %d", who, len(t.PIDs), pidns.ID, pidns.Level)
	}
	if pfc, ok := c.ix.byID[t.NS[PidForChildrenNS]]; ok && pfc.Level < pidns.Level {
		return fmt.Errorf("%s: pid_for_children namespace %d above its pid namespace", who, pfc.ID)
	}
	return nil
}

// validateGroups checks the process group and session ids: one per level,
// 0 where the leader has no pid (or for the kernel's group 0).
func validateGroups(who string, t *Task) error {
	if len(t.PGIDs) != len(t.PIDs) || len(t.SIDs) != len(t.PIDs) {
		return fmt.Errorf("%s: %d pids but %d pgids and %d sids", who, len(t.PIDs), len(t.PGIDs), len(t.SIDs))
	}
	for l := range t.PIDs {
		if t.PGIDs[l] < 0 || t.PGIDs[l] > MaxPID || t.SIDs[l] < 0 || t.SIDs[l] > MaxPID {
			return fmt.Errorf("%s: pgid %d or sid %d at level %d out of range 0..%d", who, t.PGIDs[l], t.SIDs[l], l, MaxPID)
		}
	}
	return nil
}

// validateState accepts a raw wait status only on zombies: an exit code
// (0..255) << 8, or a terminating signal 1..64, optionally | 0x80 (core).
func validateState(who string, s TaskState, status int) error {
	switch s {
	case Live, Stopped:
		if status != 0 {
			return fmt.Errorf("%s: exit status %#x on a %v task", who, status, s)
		}
		return nil
	case Zombie:
		sig := status & 0x7f
		switch {
		case status < 0 || status > 0xffff:
		case sig == 0 && status&0x80 == 0:
			return nil // exited: code in bits 8..15
		case sig >= 1 && sig <= maxSignal && status>>8 == 0:
			return nil // killed by sig, maybe with core
		}
		return fmt.Errorf("%s: impossible exit status %#x", who, status)
	}
	return fmt.Errorf("%s: bad state %d", who, int(s))
}

// validateComm refuses a command name the kernel could not have shown:
// longer than TASK_COMM_LEN-1 bytes, or with a NUL.
func validateComm(who, comm string) error {
	if len(comm) > maxComm || strings.IndexByte(comm, 0) >= 0 {
		return fmt.Errorf("%s: command name %q: more than %d bytes or a NUL", who, comm, maxComm)
	}
	return nil
}

// validateCreds refuses (uid_t)-1, which setresuid(2) would read as "keep
// the current one", more groups than setgroups(2) takes, and capability
// sets no task can have.
func validateCreds(who string, c *Creds) error {
	for _, id := range []struct {
		name string
		v    uint32
	}{{"uid", c.UID}, {"euid", c.EUID}, {"suid", c.SUID}, {"fsuid", c.FSUID},
		{"gid", c.GID}, {"egid", c.EGID}, {"sgid", c.SGID}, {"fsgid", c.FSGID}} {
		if id.v == InvalidID {
			return fmt.Errorf("%s: %s %d is not a valid id", who, id.name, id.v)
		}
	}
	// The kernel keeps ambient within permitted and inheritable
	// (capabilities(7)); the exec payload raises ambient caps from those.
	if extra := c.CapAmb &^ (c.CapInh & c.CapPrm); extra != 0 {
		return fmt.Errorf("%s: ambient capabilities %#x neither inheritable nor permitted", who, extra)
	}
	if len(c.Groups) > MaxGroups {
		return fmt.Errorf("%s: %d supplementary groups, more than %d", who, len(c.Groups), MaxGroups)
	}
	for i, g := range c.Groups {
		if g == InvalidID {
			return fmt.Errorf("%s: groups[%d] %d is not a valid id", who, i, g)
		}
	}
	return nil
}

// validateExec checks what the exec payload hands to execve(2) and
// chdir(2): C strings, so a NUL byte would silently cut them, within the
// kernel's sizes; and a root other than the dumper's, which must say so.
func validateExec(who string, t *Task) error {
	for _, p := range []struct{ name, s string }{{"exe", t.Exe}, {"cwd", t.Cwd}, {"root", t.Root}} {
		if err := cString(p.s, MaxPath); err != nil {
			return fmt.Errorf("%s: %s: %w", who, p.name, err)
		}
	}
	if t.Root != "" && t.Root != "/" && !t.RootElsewhere {
		return fmt.Errorf("%s: root %q is not the dumper's root, but root_elsewhere is not set", who, t.Root)
	}
	total := 0
	for _, v := range []struct {
		name string
		list []string
	}{{"argv", t.Argv}, {"env", t.Env}} {
		for i, s := range v.list {
			if strings.IndexByte(s, 0) >= 0 {
				return fmt.Errorf("%s: %s[%d]: contains a NUL byte", who, v.name, i)
			}
			if total += len(s) + 1; total > MaxArgBytes {
				return fmt.Errorf("%s: argv and env longer than %d bytes", who, MaxArgBytes)
			}
		}
	}
	return nil
}

// cString checks a string the kernel will read up to its first NUL.
func cString(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%d bytes, more than %d", len(s), max)
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return fmt.Errorf("contains a NUL byte at offset %d", i)
	}
	return nil
}
