package dump

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/nsinit/nsinit/internal/nsid"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// member is one process found by discovery: its pid and its start time,
// which together name it (a reused pid has another start time).
type member struct {
	pid   int
	start uint64
}

// discover lists the tree rooted at root, parents before children (children
// by ascending pid): every process whose parent chain reaches root. It is
// the fallback for kernels without the children files (CONFIG_PROC_CHILDREN):
// it scans every process's stat once.
func discover(r *procfs.Reader, root int) ([]member, error) {
	pids, err := r.Pids()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	children := make(map[int][]member, len(pids))
	var rootStart uint64
	found := false
	for _, pid := range pids {
		st, err := r.Stat(pid)
		if errors.Is(err, procfs.ErrGone) {
			continue // exited and reaped meanwhile: not part of anything
		}
		if err != nil {
			return nil, err
		}
		if pid == root {
			rootStart, found = st.StartTime, true
		}
		children[st.PPid] = append(children[st.PPid], member{pid, st.StartTime})
	}
	if !found {
		return nil, fmt.Errorf("discover tree of pid %d: %w", root, procfs.ErrGone)
	}
	out := []member{{root, rootStart}}
	for i := 0; i < len(out); i++ {
		kids := children[out[i].pid]
		slices.SortFunc(kids, func(a, b member) int { return a.pid - b.pid })
		out = append(out, kids...)
	}
	return out, nil
}

// walkChildren selects the walk through the children files where the
// kernel has them; tests turn it off to compare with the plain path
// (discover, then readTree).
var walkChildren = true

// walkWorkers is how many goroutines read /proc at once. Reading is all
// system calls that scale across CPUs; a few more workers than CPUs keep
// them busy while one blocks on a lock in the kernel.
var walkWorkers = runtime.GOMAXPROCS(0) + 1

// fast reports whether to walk the tree through the children files.
func fast(r *procfs.Reader) bool { return walkChildren && r.HasChildren() }

// findMembers lists the tree like discover does, through the children
// files when the kernel has them (reading only the tree, not all of /proc).
// Walked members have no start time (0): a cgroup freeze needs none, as
// every task of the frozen cgroups stops whatever its pid; stamp adds them
// for the ptrace freeze.
func findMembers(r *procfs.Reader, root int) ([]member, error) {
	if !fast(r) {
		return discover(r, root)
	}
	pids, starts, err := walk(r.Root, root, true, func(r *procfs.Reader, pid int) (uint64, []int, error) {
		kids, err := childrenOf(r, pid)
		return 0, kids, err
	})
	if err != nil {
		return nil, fmt.Errorf("discover tree of pid %d: %w", root, err)
	}
	return zipMembers(pids, starts), nil
}

// stamp reads the start times that findMembers left out.
func stamp(r *procfs.Reader, ms []member) error {
	for i := range ms {
		if ms[i].start != 0 {
			continue
		}
		st, err := r.Stat(ms[i].pid)
		if err != nil {
			return fmt.Errorf("pid %d: %w", ms[i].pid, err)
		}
		ms[i].start = st.StartTime
	}
	return nil
}

func zipMembers(pids []int, starts []uint64) []member {
	ms := make([]member, len(pids))
	for i := range pids {
		ms[i] = member{pids[i], starts[i]}
	}
	return ms
}

// walk visits the tree rooted at root through the children files, in the
// order discover lists it: breadth-first, each parent's children by
// ascending pid. The processes of one generation are visited by
// walkWorkers goroutines, each with a Reader of its own; visit returns what
// it read and the process's children. skipGone drops processes (not the
// root) that vanish before their visit, as discover does; otherwise they
// fail the walk with ErrGone. A pid met twice means the tree moved under
// the walk (children lists are reliable only while it is frozen): ErrGone.
func walk[T any](proc string, root int, skipGone bool, visit func(r *procfs.Reader, pid int) (T, []int, error)) ([]int, []T, error) {
	readers := make([]*procfs.Reader, walkWorkers)
	for i := range readers {
		readers[i] = procfs.New(proc)
	}
	var pids []int
	var out []T
	gen := []int{root}
	seen := map[int]bool{root: true}
	for first := true; len(gen) > 0; first = false {
		res := make([]T, len(gen))
		kids := make([][]int, len(gen))
		errs := make([]error, len(gen))
		one := func(r *procfs.Reader, j int) { res[j], kids[j], errs[j] = visit(r, gen[j]) }
		if len(gen) < 2*len(readers) {
			for j := range gen {
				one(readers[0], j)
			}
		} else {
			var next atomic.Int64
			var wg sync.WaitGroup
			for _, r := range readers {
				wg.Go(func() {
					for j := int(next.Add(1) - 1); j < len(gen); j = int(next.Add(1) - 1) {
						one(r, j)
					}
				})
			}
			wg.Wait()
		}
		var next []int
		for j, pid := range gen {
			if errs[j] != nil {
				if skipGone && !first && errors.Is(errs[j], procfs.ErrGone) {
					continue
				}
				return nil, nil, errs[j]
			}
			pids = append(pids, pid)
			out = append(out, res[j])
			slices.Sort(kids[j])
			for _, k := range kids[j] {
				if seen[k] {
					return nil, nil, fmt.Errorf("pid %d met twice (the tree moved): %w", k, procfs.ErrGone)
				}
				seen[k] = true
				next = append(next, k)
			}
		}
		gen = next
	}
	return pids, out, nil
}

// unbornPidNS marks the key of a pid namespace that a task created with
// unshare(CLONE_NEWPID) and that has no init yet: the kernel shows no link
// for it, so the key is this bit and the task's pid.
const unbornPidNS = 1 << 63

// nsKey names a namespace while the dump holds it: pid and pid_for_children
// share one key space.
type nsKey struct {
	kind pstree.NSKind
	ino  uint64
}

func keyKind(k pstree.NSKind) pstree.NSKind {
	if k == pstree.PidForChildrenNS {
		return pstree.PidNS
	}
	return k
}

// reader turns /proc into a pstree.Tree.
type reader struct {
	r        *procfs.Reader
	agentExe string // the nsinit binary whose agents are marked Agent
	tree     *pstree.Tree
	ids      map[nsKey]pstree.NSID
	rep      map[pstree.NSID]int // a task in the namespace, to open it
	fz       frozenAs
}

// frozenAs tells the reader how the tree was stopped, and so what each task
// must look like for the read to be a snapshot. The zero value (ReadLive,
// for check) expects nothing.
type frozenAs struct {
	// frozen: refuse a task or thread past the point of no return
	// (PF_EXITING): a freeze cannot stop it and it may still show
	// running, so it would be recorded alive while it is dying.
	frozen bool
	// ptrace: every live task and thread was seen stopping, so it must
	// show 't' (tracing stop); one that does not is running (mid-exec,
	// mid-fork, exiting) and the read is no snapshot.
	ptrace bool
	// stopped: level-0 tids that were in group-stop when ptrace seized
	// them (ptrace shows them as 't' afterwards). Nil under cgroup freeze.
	stopped map[int]bool
}

// readTree reads every member into a Tree. Members that vanished make it
// fail with an error wrapping procfs.ErrGone (the caller retries).
func readTree(r *procfs.Reader, members []member, agentExe string, fz frozenAs) (*pstree.Tree, error) {
	rd := &reader{r: r, agentExe: agentExe, tree: &pstree.Tree{},
		ids: map[nsKey]pstree.NSID{}, rep: map[pstree.NSID]int{}, fz: fz}
	for i, m := range members {
		ti, err := rd.task(r, m.pid, false, true)
		if err == nil && ti.start != m.start {
			err = fmt.Errorf("pid reused (start time %d, was %d): %w", ti.start, m.start, procfs.ErrGone)
		}
		if err != nil {
			return nil, fmt.Errorf("read pid %d: %w", m.pid, err)
		}
		if i == 0 {
			ti.t.PPID = 0 // the root's parent is outside the tree
		}
		rd.add(ti)
	}
	rd.markWaiters()
	if err := rd.parentThreads(); err != nil {
		return nil, err
	}
	if err := rd.namespaces(); err != nil {
		return nil, err
	}
	return rd.tree, nil
}

// readTreeWalk is readTree for kernels with the children files: one walk
// finds the members and reads them (the members are returned to compare
// with an earlier discovery; with start times if withStart), on
// walkWorkers goroutines.
func readTreeWalk(proc string, root int, withStart bool, agentExe string, fz frozenAs) (*pstree.Tree, []member, error) {
	rd := &reader{r: procfs.New(proc), agentExe: agentExe, tree: &pstree.Tree{},
		ids: map[nsKey]pstree.NSID{}, rep: map[pstree.NSID]int{}, fz: fz}
	pids, infos, err := walk(proc, root, false, func(r *procfs.Reader, pid int) (taskInfo, []int, error) {
		ti, err := rd.task(r, pid, true, withStart)
		if err != nil {
			return ti, nil, fmt.Errorf("read pid %d: %w", pid, err)
		}
		return ti, ti.kids, nil
	})
	if err != nil {
		return nil, nil, err
	}
	starts := make([]uint64, len(infos))
	for i := range infos {
		starts[i] = infos[i].start
		infos[i].kids = nil
	}
	infos[0].t.PPID = 0 // the root's parent is outside the tree
	rd.tree.Tasks = make([]pstree.Task, 0, len(infos))
	for _, ti := range infos {
		rd.add(ti)
	}
	rd.markWaiters()
	if err := rd.parentThreads(); err != nil {
		return nil, nil, err
	}
	if err := rd.namespaces(); err != nil {
		return nil, nil, err
	}
	return rd.tree, zipMembers(pids, starts), nil
}

func state(c byte, groupStopped bool) (pstree.TaskState, error) {
	switch c {
	case 'Z':
		return pstree.Zombie, nil
	case 'T':
		return pstree.Stopped, nil
	case 'X':
		return 0, fmt.Errorf("task dying (state X): %w", procfs.ErrGone)
	}
	if groupStopped {
		return pstree.Stopped, nil
	}
	return pstree.Live, nil
}

// still checks that a task (or thread) of a frozen tree cannot move: its
// state from status, and its state and flags from stat when read (0 if
// not). The error wraps errMoved: the dump is retried.
func (fz frozenAs) still(state, statState byte, flags uint64) error {
	if !fz.frozen || state == 'Z' || state == 'X' {
		return nil
	}
	if flags&procfs.PFExiting != 0 && statState != 'Z' && statState != 'X' {
		return fmt.Errorf("exiting (PF_EXITING, state %c): %w", state, errMoved)
	}
	if fz.ptrace && state != 't' {
		return fmt.Errorf("not stopped (state %c under ptrace): %w", state, errMoved)
	}
	return nil
}

// taskInfo is one process as read from /proc, before its namespaces get
// image ids (rd.add does that, in tree order, so the ids do not depend on
// which worker read what first).
type taskInfo struct {
	t     pstree.Task
	start uint64
	ino   [len(pstree.NSSet{})]uint64 // namespace inodes by kind, 0 if absent
	kids  []int                       // children pids (if asked for), unsorted
}

// task reads process pid through r. It only reads rd, so workers may call
// it concurrently, each with a Reader of its own. withKids also reads the
// children files of every thread; withStart reads stat for the start time
// even when the task is not a zombie (stat's only other use: exit status).
func (rd *reader) task(r *procfs.Reader, pid int, withKids, withStart bool) (taskInfo, error) {
	// Every file through one open /proc/PID: shorter lookups, and all of
	// them about the same process.
	p, err := r.Open(pid)
	if err != nil {
		return taskInfo{}, err
	}
	defer p.Close()
	s, err := p.Status()
	if err != nil {
		return taskInfo{}, err
	}
	var st procfs.Stat
	if withStart || s.State == 'Z' || rd.fz.frozen {
		if st, err = p.Stat(); err != nil {
			return taskInfo{}, err
		}
	}
	if err := rd.fz.still(s.State, st.State, st.Flags); err != nil {
		return taskInfo{}, err
	}
	var ti taskInfo
	if withStart {
		ti.start = st.StartTime
	}
	t := &ti.t
	*t = pstree.Task{
		PIDs:  s.NSpid,
		Comm:  s.Name,
		PPID:  s.PPid,
		PGIDs: s.NSpgid,
		SIDs:  s.NSsid,
		Creds: pstree.Creds{
			UID: s.UID[0], EUID: s.UID[1], SUID: s.UID[2], FSUID: s.UID[3],
			GID: s.GID[0], EGID: s.GID[1], SGID: s.GID[2], FSGID: s.GID[3],
			Groups: s.Groups,
			CapInh: s.CapInh, CapPrm: s.CapPrm, CapEff: s.CapEff, CapBnd: s.CapBnd, CapAmb: s.CapAmb,
		},
	}
	if t.State, err = state(s.State, rd.fz.stopped[pid]); err != nil {
		return ti, err
	}
	if t.State == pstree.Zombie {
		t.ExitStatus = st.ExitCode
	}
	// A single-threaded process (the common case) needs no task listing.
	tids := []int{pid}
	if s.Threads != 1 {
		if tids, err = p.Tasks(); err != nil {
			return ti, err
		}
		slices.Sort(tids)
	}
	if err := rd.threads(p, tids, t); err != nil {
		return ti, err
	}
	if withKids {
		for _, tid := range tids {
			kids, err := p.Children(tid)
			if err != nil {
				return ti, fmt.Errorf("children of thread %d: %w", tid, err)
			}
			ti.kids = append(ti.kids, kids...)
		}
	}
	for _, k := range pstree.AllNSKinds() {
		ino, err := p.NSInode(k.ProcName())
		if err != nil {
			if t.State == pstree.Zombie {
				continue // a zombie keeps only ns/pid and ns/user (F6.1)
			}
			if k == pstree.PidForChildrenNS && p.Alive() {
				// After unshare(CLONE_NEWPID) and before its first
				// child the new namespace has no init, and the kernel
				// hides the link. It is nobody's yet: name it after
				// the task (no real inode has the top bit set).
				ti.ino[k] = unbornPidNS | uint64(pid)
				continue
			}
			return ti, err
		}
		ti.ino[k] = ino
	}
	if t.State != pstree.Zombie {
		// Zombies have no mm, cwd or root any more; a gone process
		// surfaces as ErrGone on the next read anyway.
		if t.Argv, err = p.Cmdline(); err != nil {
			return ti, err
		}
		if t.Env, err = p.Environ(); err != nil {
			return ti, err
		}
		for _, l := range []struct {
			name string
			dst  *string
		}{{"exe", &t.Exe}, {"cwd", &t.Cwd}, {"root", &t.Root}} {
			if *l.dst, err = p.Link(l.name); err != nil {
				return ti, err
			}
		}
		same, err := p.SameFile("root", "/")
		if err != nil {
			return ti, err
		}
		t.RootElsewhere = !same
		t.Agent = rd.isAgent(r, pid, t.Argv)
	}
	return ti, nil
}

// waitSyscalls are the system calls of a task waiting for its children:
// wait4 and waitid, and rt_sigsuspend, where shells wait for SIGCHLD.
var waitSyscalls = []int{unix.SYS_WAIT4, unix.SYS_WAITID, unix.SYS_RT_SIGSUSPEND}

// markWaiters sets WaitsForChildren on each live task with children, none
// of them a zombie, that is blocked in one of waitSyscalls (read from
// /proc/PID/syscall, which a frozen task still shows). A task with a zombie
// child is not reaping, whatever it waits for; a task that cannot be read
// is left unmarked (the mark only chooses how restore runs it again).
func (rd *reader) markWaiters() {
	kids, zombieKids := map[int]int{}, map[int]int{}
	for _, t := range rd.tree.Tasks {
		kids[t.PPID]++
		if t.State == pstree.Zombie {
			zombieKids[t.PPID]++
		}
	}
	for i := range rd.tree.Tasks {
		t := &rd.tree.Tasks[i]
		if t.State != pstree.Live || kids[t.PID()] == 0 || zombieKids[t.PID()] > 0 {
			continue
		}
		if nr, err := rd.r.Syscall(t.PID()); err == nil && slices.Contains(waitSyscalls, nr) {
			t.WaitsForChildren = true
		}
	}
}

// parentThreads records which of its parent's threads each task is a
// child of: the thread whose /proc/PPID/task/TID/children lists it (the
// one that forked it, or that adopted it, F5.2). A single-threaded parent
// needs no read: it is the leader. Without the children files (no
// CONFIG_PROC_CHILDREN) nothing is recorded (0).
func (rd *reader) parentThreads() error {
	if !rd.r.HasChildren() {
		return nil
	}
	tasks := rd.tree.Tasks
	index := make(map[int]int, len(tasks))
	for i := range tasks {
		index[tasks[i].PIDs[0]] = i
		if i > 0 {
			tasks[i].ParentTID = tasks[i].PPID
		}
	}
	for i := range tasks {
		t := &tasks[i]
		if len(t.Threads) == 0 {
			continue
		}
		p, err := rd.r.Open(t.PIDs[0])
		if err != nil {
			return fmt.Errorf("read pid %d: %w", t.PIDs[0], err)
		}
		for _, th := range t.Threads {
			kids, err := p.Children(th.TIDs[0])
			if err != nil {
				p.Close()
				return fmt.Errorf("children of thread %d of %d: %w", th.TIDs[0], t.PIDs[0], err)
			}
			for _, k := range kids {
				if c, ok := index[k]; ok && c > 0 && tasks[c].PPID == t.PIDs[0] {
					tasks[c].ParentTID = th.TIDs[0]
				}
			}
		}
		p.Close()
	}
	return nil
}

// add appends a task read by task to the tree, naming its namespaces.
func (rd *reader) add(ti taskInfo) {
	t := ti.t
	for _, k := range pstree.AllNSKinds() {
		if ti.ino[k] != 0 {
			t.NS[k] = rd.nsID(keyKind(k), ti.ino[k], t.PIDs[0], k)
		}
	}
	rd.tree.Tasks = append(rd.tree.Tasks, t)
}

// threads records the threads tids (sorted, the leader among them) of p.
func (rd *reader) threads(p *procfs.Proc, tids []int, t *pstree.Task) error {
	for _, tid := range tids {
		if tid == p.Pid() {
			continue
		}
		ts, err := p.TaskStatus(tid)
		if errors.Is(err, procfs.ErrGone) {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
		if err != nil {
			return err
		}
		if len(ts.NSpid) != len(t.PIDs) {
			return fmt.Errorf("thread %d has %d levels, its process %d", tid, len(ts.NSpid), len(t.PIDs))
		}
		var flags uint64
		var stState byte
		if rd.fz.frozen && !rd.fz.ptrace {
			// Under ptrace 't' tells a stopped thread; otherwise only
			// the flags tell an exiting one.
			st, err := p.TaskStat(tid)
			if err != nil {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			flags, stState = st.Flags, st.State
		}
		if err := rd.fz.still(ts.State, stState, flags); err != nil {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
		s, err := state(ts.State, rd.fz.stopped[tid])
		if err != nil {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
		t.Threads = append(t.Threads, pstree.Thread{TIDs: ts.NSpid, State: s, Comm: ts.Name})
	}
	return nil
}

func (rd *reader) nsID(kind pstree.NSKind, ino uint64, pid int, via pstree.NSKind) pstree.NSID {
	k := nsKey{kind, ino}
	id, ok := rd.ids[k]
	if !ok {
		id = pstree.NSID(len(rd.tree.Namespaces) + 1)
		rd.ids[k] = id
		rd.tree.Namespaces = append(rd.tree.Namespaces, pstree.Namespace{ID: id, Kind: kind})
	}
	// A namespace first met as someone's pid_for_children (or as a parent)
	// gets its representative from the first task really in it.
	if _, has := rd.rep[id]; !has && pid > 0 && via != pstree.PidForChildrenNS {
		rd.rep[id] = pid
	}
	return id
}

// namespaces fills in parents, owners, levels, user maps and the cursor.
// Namespaces reached only as a parent or owner are added as they are found
// (without a task in them: a user namespace's maps are read through a
// joiner, memberlessMaps).
func (rd *reader) namespaces() error {
	fds := map[pstree.NSID]int{}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	// pid_for_children namespaces that no task is in have no
	// representative; find one through the pid_for_children link.
	unborn := map[pstree.NSID]*pstree.Task{}
	for i := range rd.tree.Tasks {
		t := &rd.tree.Tasks[i]
		if id := t.NS[pstree.PidForChildrenNS]; id != 0 {
			if rd.ids[nsKey{pstree.PidNS, unbornPidNS | uint64(t.PIDs[0])}] == id {
				// No init yet, nothing to open: a child of the task's
				// pid namespace, owned by its user namespace (the
				// kernel gives the new namespace to the unsharer's).
				unborn[id] = t
				continue
			}
			_, hasRep := rd.rep[id]
			if _, open := fds[id]; !hasRep && !open {
				fd, err := rd.r.OpenNS(t.PIDs[0], "pid_for_children")
				if err != nil {
					return fmt.Errorf("open pid_for_children of %d: %w", t.PIDs[0], err)
				}
				fds[id] = fd
			}
		}
	}
	for i := 0; i < len(rd.tree.Namespaces); i++ {
		ns := &rd.tree.Namespaces[i]
		id, kind := ns.ID, ns.Kind
		if t, ok := unborn[id]; ok {
			ns.Parent, ns.Owner = t.NS[pstree.PidNS], t.NS[pstree.UserNS]
			continue
		}
		fd, ok := fds[id]
		if !ok {
			pid := rd.rep[id]
			var err error
			if fd, err = rd.r.OpenNS(pid, kind.ProcName()); err != nil {
				return fmt.Errorf("open %v namespace of pid %d: %w", kind, pid, err)
			}
			fds[id] = fd
		}
		// rd.tree.Namespaces may grow below: use indexes, not ns.
		if kind == pstree.PidNS || kind == pstree.UserNS {
			pfd, err := nsid.Parent(fd)
			switch {
			case errors.Is(err, nsid.ErrNotVisible):
			case err != nil:
				return fmt.Errorf("%v namespace %d: %w", kind, id, err)
			default:
				pid, err := rd.adopt(fds, pfd, kind)
				if err != nil {
					return err
				}
				rd.tree.Namespaces[i].Parent = pid
			}
		}
		ofd, err := nsid.Owner(fd)
		switch {
		case errors.Is(err, nsid.ErrNotVisible):
		case err != nil:
			return fmt.Errorf("%v namespace %d: %w", kind, id, err)
		default:
			oid, err := rd.adopt(fds, ofd, pstree.UserNS)
			if err != nil {
				return err
			}
			rd.tree.Namespaces[i].Owner = oid
		}
		if kind == pstree.UserNS {
			if err := rd.userNS(&rd.tree.Namespaces[i], fd); err != nil {
				return err
			}
		}
	}
	// Levels: depth below the top of the visible pid namespace chain.
	for i := range rd.tree.Namespaces {
		ns := &rd.tree.Namespaces[i]
		if ns.Kind != pstree.PidNS {
			continue
		}
		for p := ns.Parent; p != 0; {
			if ns.Level++; ns.Level > pstree.MaxLevel {
				return fmt.Errorf("pid namespace %d: deeper than %d levels", ns.ID, pstree.MaxLevel)
			}
			pns := rd.tree.Namespace(p)
			if pns == nil {
				return fmt.Errorf("pid namespace %d: ancestor %d was never read", ns.ID, p)
			}
			p = pns.Parent
		}
	}
	for i := range rd.tree.Tasks {
		t := &rd.tree.Tasks[i]
		pns := rd.tree.Namespace(t.NS[pstree.PidNS])
		if pns == nil {
			return fmt.Errorf("pid %d: its pid namespace could not be read", t.PIDs[0])
		}
		if l := pns.Level; l != t.Level() {
			return fmt.Errorf("pid %d: %d pid levels in %s but its pid namespace is %d below the top visible one (is %s the procfs of our pid namespace?)",
				t.PIDs[0], len(t.PIDs), rd.r.Root, l, rd.r.Root)
		}
	}
	rd.lastPID()
	// Hostnames, net namespace contents (dump/netns.go, dump/uts.go).
	return rd.contents(fds)
}

// adopt names the namespace behind fd (taking ownership of fd).
func (rd *reader) adopt(fds map[pstree.NSID]int, fd int, kind pstree.NSKind) (pstree.NSID, error) {
	ino, err := nsid.Inode(fd)
	if err != nil {
		unix.Close(fd)
		return 0, err
	}
	id := rd.nsID(kind, ino, 0, kind)
	if _, ok := fds[id]; ok {
		unix.Close(fd)
	} else {
		fds[id] = fd
	}
	return id, nil
}

func (rd *reader) userNS(ns *pstree.Namespace, fd int) error {
	uid, err := nsid.OwnerUID(fd)
	if err != nil {
		return err
	}
	ns.OwnerUID = uid
	var uids, gids []procfs.IDMapEntry
	if pid, ok := rd.rep[ns.ID]; ok {
		if uids, err = rd.r.IDMap(pid, "uid_map"); err == nil {
			if gids, err = rd.r.IDMap(pid, "gid_map"); err == nil {
				ns.SetgroupsAllowed, err = rd.r.SetgroupsAllowed(pid)
			}
		}
		if err != nil {
			return fmt.Errorf("user namespace %d via pid %d: %w", ns.ID, pid, err)
		}
	} else {
		// Seen only as a parent or owner: no task of the tree is in
		// it. The dumper's own needs nothing (ambient: a restore uses
		// its own); any other is joined for a moment to read its maps.
		ino, err := nsid.Inode(fd)
		if err != nil {
			return err
		}
		if self, err := rd.r.NSInode(os.Getpid(), "user"); err == nil && self == ino {
			return nil
		}
		if uids, gids, ns.SetgroupsAllowed, err = memberlessMaps(rd.r, fd); err != nil {
			return fmt.Errorf("user namespace %d (no task in it): %w", ns.ID, err)
		}
	}
	for _, m := range []struct {
		src []procfs.IDMapEntry
		dst *[]pstree.IDMapEntry
	}{{uids, &ns.UIDMap}, {gids, &ns.GIDMap}} {
		for _, e := range m.src {
			*m.dst = append(*m.dst, pstree.IDMapEntry{Inside: e.Inside, Outside: e.Outside, Count: e.Count})
		}
	}
	return nil
}

// lastPID records ns_last_pid where it can be read truthfully. The sysctl
// always shows the READER's active pid namespace, whichever procfs it is
// reached through (docs/kernel.md F1.1), so only the dumper's own pid
// namespace - level 0 when the procfs is ours - can be read from outside.
// Every other namespace keeps 0 (unknown): reading it needs a task inside.
func (rd *reader) lastPID() {
	self, err := rd.r.NSInode(os.Getpid(), "pid")
	if err != nil {
		return
	}
	id, ok := rd.ids[nsKey{pstree.PidNS, self}]
	if !ok {
		return
	}
	// The file acts on the reader's own namespace whatever procfs holds it
	// (docs/kernel.md F1.1).
	if n, err := procfs.ReadLastPID(); err == nil {
		rd.tree.Namespace(id).LastPID = n
	}
}

// isAgent applies the agent rule (docs/image-format.md): argv[0]'s base
// name is "nsinit", the executable is the same file as agentExe (same
// device and inode, or same content), and argv[1] is not one of the tool
// subcommands (an agent runs in init mode: options or "--" follow).
func (rd *reader) isAgent(r *procfs.Reader, pid int, argv []string) bool {
	if rd.agentExe == "" || len(argv) == 0 || filepath.Base(argv[0]) != "nsinit" {
		return false
	}
	if len(argv) > 1 {
		switch argv[1] {
		case "dump", "restore", "show", "encode", "check", "trace", "help", "version", "--version", "-V", "--help", "-h":
			return false
		}
	}
	exe := r.Root + "/" + strconv.Itoa(pid) + "/exe"
	var a, b unix.Stat_t
	if unix.Stat(exe, &a) != nil || unix.Stat(rd.agentExe, &b) != nil {
		return false
	}
	if a.Dev == b.Dev && a.Ino == b.Ino {
		return true
	}
	return a.Size == b.Size && sameContent(exe, rd.agentExe)
}

func sameContent(p, q string) bool {
	h := func(name string) []byte {
		f, err := os.Open(name)
		if err != nil {
			return nil
		}
		defer f.Close()
		s := sha256.New()
		if _, err := io.Copy(s, f); err != nil {
			return nil
		}
		return s.Sum(nil)
	}
	a, b := h(p), h(q)
	return a != nil && string(a) == string(b)
}

// ErrUnrepresentable is wrapped when the tree has a shape the image cannot
// carry faithfully; the dump refuses rather than writing a wrong image.
var ErrUnrepresentable = errors.New("tree cannot be represented in an image")

// representable refuses a task whose pid namespace is neither the root's
// nor one whose init (pid 1) is a task of the tree, and pid_for_children
// namespaces of the same kind unless they are fresh (no task in them yet,
// created by unshare below the task's own namespace): restore could not
// re-create such a namespace without tasks outside the tree.
func representable(tr *pstree.Tree) error {
	root := tr.Tasks[0].NS[pstree.PidNS]
	owned := map[pstree.NSID]bool{root: true}
	used := map[pstree.NSID]bool{}
	for _, t := range tr.Tasks {
		used[t.NS[pstree.PidNS]] = true
		if t.InnerPID() == 1 {
			owned[t.NS[pstree.PidNS]] = true
		}
	}
	for _, t := range tr.Tasks {
		if !owned[t.NS[pstree.PidNS]] {
			return fmt.Errorf("%w: pid %d is in pid namespace %d at level %d whose init is not in the tree",
				ErrUnrepresentable, t.PIDs[0], t.NS[pstree.PidNS], t.Level())
		}
		pfc := t.NS[pstree.PidForChildrenNS]
		if pfc == 0 || owned[pfc] {
			continue
		}
		if used[pfc] || tr.Namespace(pfc).Parent != t.NS[pstree.PidNS] {
			return fmt.Errorf("%w: pid %d has pid_for_children namespace %d whose init is not in the tree",
				ErrUnrepresentable, t.PIDs[0], pfc)
		}
	}
	return netRestorable(tr)
}
