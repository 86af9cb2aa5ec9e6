// Package dump reads a live process tree, spanning nested pid namespaces,
// into a pstree.Tree while the tree is frozen.
//
// Flow of one attempt (Dump retries a bounded number of times):
//
//	discover -> freeze (to a fixed point) -> Guard.Arm -> read
//	-> Guard.Disarm -> thaw (unless LeaveStopped)
//
// The guard is armed only once the freeze is complete, so it covers what
// begins after nothing in the tree could move. Options.LoadGuard loads it
// (eBPF programs: BTF parsing, the verifier) meanwhile, beside the
// discovery and the freeze. The attempt is retried
// when the guard saw a fork/exit/exec, when the read differs from the tree
// the freeze found (a task appeared, vanished or its pid was reused), when
// a task vanished while being read, or when a task read is not still
// (exiting, or under ptrace not in its tracing stop).
//
// Discovery walks the tree from the root through the children files
// (/proc/PID/task/TID/children), and after the freeze one parallel walk
// both discovers and reads. Kernels without CONFIG_PROC_CHILDREN get the
// plain path: scan every process's stat, then read the members one by one.
//
// Freezing: cgroup v2 cgroup.freeze when the tree's tasks are alone in
// their cgroups (one write, parents see nothing); else PTRACE_SEIZE +
// PTRACE_INTERRUPT of every thread, top-down (a parent is stopped before
// its children are listed) until a pass over the tree seizes nothing new;
// detached afterwards.
package dump

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Guard detects a dump that raced with the tree. Implemented by package bpf.
// It reports the events whose tracepoint fires between Arm and Disarm; a
// task already exiting when Arm returns may have fired its exit before, so
// the read refuses tasks with PF_EXITING itself (docs/ebpf.md).
type Guard interface {
	// Arm starts counting fork, exit and exec events of the given tasks (level-0 pids)
	// and of every task in the given pid namespaces or below them (open fds of
	// /proc/PID/ns/pid, owned by the caller and kept open until Disarm).
	Arm(pids []int, pidnsFDs []int) error
	// Disarm stops counting and reports what happened since Arm; empty means nothing moved.
	Disarm() (moved []string, err error)
}

// Options tune Dump. The zero value dumps through /proc with no guard.
type Options struct {
	// Proc is the procfs to read ("/proc"); it must be the procfs of the
	// dumper's pid namespace.
	Proc string
	// Guard, when set, makes the dump checked (Tree.Checked).
	Guard Guard
	// LoadGuard, when set and Guard is nil, makes the guard while the tree
	// is discovered and frozen: loading eBPF programs takes about as long
	// as freezing a big tree, and neither needs the other. The guard is
	// still armed only once the freeze is complete. An error from it ends
	// the dump (wrapping ErrNoGuard) once the tree is thawed. Dump waits
	// for it before returning and closes the guard if it is an io.Closer.
	LoadGuard func() (Guard, error)
	// Retries is how many more attempts follow a raced one (default 3).
	Retries int
	// LeaveStopped leaves the tree frozen (cgroup) or SIGSTOPped (ptrace).
	LeaveStopped bool
	// AgentExe is the nsinit binary whose init-mode processes are marked
	// Agent; default: the running executable.
	AgentExe string
	// Subreapers, when set, says which processes are child subreapers
	// (level-0 pids; bpf.Subreapers), asked while the tree is frozen: a
	// process changes its own flag only. An error leaves the image without
	// them (Tree.SubreapersRecorded false), noted in Log.
	Subreapers func() (map[int]bool, error)
	// State, when set, is called with the tree read, while it is still
	// frozen: `dump --state` records what runs inside the tasks then
	// (package state). onTracer runs a function on the thread that traces
	// the tree (ptrace freeze), nil when nothing traces it (cgroup). Its
	// error ends the attempt.
	State func(tr *pstree.Tree, onTracer func(func())) error
	// Write, when set, is called with a tree whose read the guard found
	// consistent, before the tree is killed (KillFrozen) or thawed: with
	// KillFrozen, the image exists before the tree dies, and a tree whose
	// image could not be written is never killed. Its error ends the
	// dump, and the tree is thawed.
	Write func(tr *pstree.Tree) error
	// KillFrozen kills the tree before it would be thawed, after a
	// successful read: a tree dumped with its state must not run on
	// between the dump and the kill.
	KillFrozen bool
	// FreezeTimeout bounds the wait for the tree to stop (default 5s).
	FreezeTimeout time.Duration
	// Log receives progress notes (method used, retries); may be nil.
	Log func(format string, args ...any)
	// Progress, when set, is told each stage of an attempt as it ends:
	// "found", "froze" and "read", with the number of tasks (a progress
	// display; `nsinit dump` shows it on a terminal).
	Progress func(stage string, tasks int)
}

// ErrRaced is wrapped when every attempt raced with the tree.
var ErrRaced = errors.New("tree kept changing during the dump")

// ErrTimeout is wrapped when the tree did not freeze (or stay stopped) in
// time.
var ErrTimeout = errors.New("timed out")

// ErrNoGuard is wrapped when Options.LoadGuard failed.
var ErrNoGuard = errors.New("no consistency guard")

// errMoved is wrapped by an attempt that found the tree moving under the
// freeze (a task exiting, not stopped): the attempt is retried.
var errMoved = errors.New("the tree moved")

// Dump freezes and reads the tree rooted at level-0 pid root.
func Dump(root int, o Options) (*pstree.Tree, error) {
	o = o.withDefaults()
	var gl *guardLoader
	if o.Guard == nil && o.LoadGuard != nil {
		gl = loadGuard(o.LoadGuard)
		defer gl.close()
	}
	var last error
	for attempt := 0; attempt <= o.Retries; attempt++ {
		tr, moved, err := dumpOnce(root, o, gl)
		if err == nil && len(moved) == 0 {
			return tr, nil
		}
		if err != nil && !errors.Is(err, procfs.ErrGone) && !errors.Is(err, errMoved) {
			return nil, err
		}
		if err != nil {
			last = err
		} else {
			last = fmt.Errorf("moved: %s", strings.Join(moved, "; "))
		}
		o.logf("dump attempt %d of pid %d raced: %v", attempt+1, root, last)
	}
	return nil, fmt.Errorf("dump pid %d: %w after %d attempts: %w", root, ErrRaced, o.Retries+1, last)
}

func (o Options) withDefaults() Options {
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.Retries < 0 {
		o.Retries = 0
	}
	if o.FreezeTimeout == 0 {
		o.FreezeTimeout = 5 * time.Second
	}
	if o.AgentExe == "" {
		o.AgentExe, _ = os.Executable()
	}
	return o
}

// guardLoader runs Options.LoadGuard in the background.
type guardLoader struct {
	done chan struct{}
	g    Guard
	err  error
	took time.Duration
}

func loadGuard(load func() (Guard, error)) *guardLoader {
	l := &guardLoader{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t0 := time.Now()
		l.g, l.err = load()
		l.took = time.Since(t0)
		if l.err == nil && l.g == nil {
			l.err = errors.New("LoadGuard returned no guard")
		}
	}()
	return l
}

// wait returns the guard once it is loaded.
func (l *guardLoader) wait() (Guard, error) {
	<-l.done
	if l.err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoGuard, l.err)
	}
	return l.g, nil
}

// close waits for the load and releases what it made.
func (l *guardLoader) close() {
	if g, err := l.wait(); err == nil {
		if c, ok := g.(io.Closer); ok {
			c.Close()
		}
	}
}

func (o Options) progress(stage string, tasks int) {
	if o.Progress != nil {
		o.Progress(stage, tasks)
	}
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		o.Log(format, args...)
	}
}

// dumpOnce is one attempt. A non-empty moved (or an error wrapping
// procfs.ErrGone or errMoved) means the attempt raced and may be retried.
func dumpOnce(root int, o Options, gl *guardLoader) (tr *pstree.Tree, moved []string, err error) {
	r := procfs.New(o.Proc)
	t0 := time.Now()
	before, err := findMembers(r, root)
	if err != nil {
		return nil, nil, err
	}
	self := os.Getpid()
	for _, m := range before {
		if m.pid == self {
			return nil, nil, fmt.Errorf("dump pid %d: the dumper (pid %d) is in the tree", root, m.pid)
		}
	}
	o.progress("found", len(before))
	t1 := time.Now()
	fz, members, err := freeze(r, root, before, o)
	if err != nil {
		return nil, nil, err
	}
	t2 := time.Now()
	o.progress("froze", len(members))
	o.logf("found %d tasks in %v, froze %d with %v in %v", len(before), t1.Sub(t0).Round(time.Millisecond), len(members), fz, t2.Sub(t1).Round(time.Millisecond))
	// The guard is armed once nothing in the tree can move any more: it
	// covers what begins after that (a kill from outside, a task the
	// freeze missed); what was under way before is the freeze's and the
	// read's to notice (docs/ebpf.md, "The guard's contract").
	disarm := func() {}
	guard := o.Guard
	if gl != nil {
		var gerr error
		if guard, gerr = gl.wait(); gerr != nil {
			if terr := fz.thaw(false); terr != nil {
				gerr = errors.Join(gerr, terr)
			}
			return nil, nil, gerr
		}
		o.logf("loaded the guard in %v, beside the freeze (waited %v for it)", gl.took.Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
	}
	if guard != nil {
		fds, gerr := guardNamespaces(r, members)
		defer closeAll(fds)
		if gerr == nil {
			ta := time.Now()
			if gerr = guard.Arm(pids(members), fds); gerr != nil {
				gerr = fmt.Errorf("arm consistency guard: %w", gerr)
			}
			o.logf("armed the guard in %v", time.Since(ta).Round(time.Millisecond))
		}
		if gerr != nil {
			if terr := fz.thaw(false); terr != nil {
				gerr = errors.Join(gerr, terr)
			}
			return nil, nil, gerr
		}
		disarmed := false
		disarm = func() {
			if disarmed {
				return
			}
			disarmed = true
			m, derr := guard.Disarm()
			if derr != nil && err == nil {
				tr, err = nil, fmt.Errorf("disarm consistency guard: %w", derr)
			}
			moved = append(moved, m...)
		}
	}
	defer func() {
		// Stop counting before the tree runs again: what it does after
		// the thaw is no race with this dump.
		t3 := time.Now()
		disarm()
		t4 := time.Now()
		if err == nil && len(moved) == 0 && tr != nil {
			// After the guard (the probes fork into the tree's
			// namespaces), before the tree runs again.
			probeCursors(tr, o)
		}
		t5 := time.Now()
		if err == nil && len(moved) == 0 && tr != nil {
			tr.Checked = o.Guard != nil || gl != nil
			tr.Kernel, tr.PidMax = thisKernel()
			if o.Write != nil {
				tw := time.Now()
				if werr := o.Write(tr); werr != nil {
					tr, err = nil, werr
				}
				o.logf("wrote the image in %v, frozen", time.Since(tw).Round(time.Millisecond))
			}
		}
		t6 := time.Now()
		leave := o.LeaveStopped && err == nil && len(moved) == 0
		if o.KillFrozen && err == nil && len(moved) == 0 && tr != nil {
			killFrozen(tr)
		}
		if terr := fz.thaw(leave); terr != nil && err == nil {
			tr, err = nil, terr
		}
		o.logf("disarmed in %v, probed the pid cursors in %v, thawed in %v",
			t4.Sub(t3).Round(time.Millisecond), t5.Sub(t4).Round(time.Millisecond), time.Since(t6).Round(time.Millisecond))
	}()
	var d []string
	if tr, d, err = readFrozen(r, root, members, o.AgentExe, fz.frozenAs()); tr == nil {
		return nil, d, err
	}
	o.progress("read", len(tr.Tasks))
	o.logf("read %d tasks in %v", len(tr.Tasks), time.Since(t2).Round(time.Millisecond))
	if m := fz.missed(tr); len(m) > 0 {
		return nil, m, nil
	}
	if err := representable(tr); err != nil {
		return nil, nil, err
	}
	if o.Subreapers != nil {
		if set, serr := o.Subreapers(); serr == nil {
			tr.MarkSubreapers(set)
		} else {
			o.logf("child subreapers not recorded: %v", serr)
		}
	}
	if o.State != nil {
		var onTracer func(func())
		if p, ok := fz.(*ptraceFreezer); ok {
			onTracer = p.do
		}
		if err := o.State(tr, onTracer); err != nil {
			return nil, nil, err
		}
	}
	return tr, nil, nil
}

// killFrozen sends SIGKILL to every task of a frozen tree, children
// first: a cgroup-frozen or ptrace-stopped task dies of it without
// running again.
func killFrozen(tr *pstree.Tree) {
	for i := len(tr.Tasks) - 1; i >= 0; i-- {
		_ = unix.Kill(tr.Tasks[i].PIDs[0], unix.SIGKILL)
	}
}

// readFrozen reads the frozen tree. A nil tree with a nil error means the
// tree differs from the members found before the freeze: moved says how.
func readFrozen(r *procfs.Reader, root int, before []member, agentExe string, fz frozenAs) (tr *pstree.Tree, moved []string, err error) {
	if fast(r) {
		// One walk finds and reads the members.
		// Start times only where the members have them (ptrace).
		tr, after, err := readTreeWalk(r.Root, root, before[0].start != 0, agentExe, fz)
		if err != nil {
			// A task that joined after the freeze (ptrace) may be
			// what broke the read: if so, it is a race.
			after, derr := findMembers(r, root)
			if derr == nil && before[0].start != 0 {
				derr = stamp(r, after) // compare like with like
			}
			if derr == nil {
				if d := diffMembers(before, after); len(d) > 0 {
					return nil, d, nil
				}
			}
			return nil, nil, err
		}
		if d := diffMembers(before, after); len(d) > 0 {
			return nil, d, nil
		}
		return tr, nil, nil
	}
	after, err := discover(r, root)
	if err != nil {
		return nil, nil, err
	}
	if d := diffMembers(before, after); len(d) > 0 {
		return nil, d, nil
	}
	tr, err = readTree(r, after, agentExe, fz)
	return tr, nil, err
}

// freeze stops the tree and returns the freezer and the tree's members as
// they stand frozen (before: the members found while it ran, which choose
// the cgroups).
func freeze(r *procfs.Reader, root int, before []member, o Options) (freezer, []member, error) {
	if c, why := cgroupFor(r, before); c != nil {
		if err := c.freeze(o.FreezeTimeout); err != nil {
			return nil, nil, err
		}
		members, err := findMembers(r, root)
		if err != nil {
			c.thaw(false)
			return nil, nil, err
		}
		return c, members, nil
	} else {
		o.logf("not using cgroup freeze: %s", why)
	}
	p, err := ptraceFreeze(r, root, o.FreezeTimeout)
	if err != nil {
		return nil, nil, err
	}
	return p, p.members, nil
}

// ReadLive reads the tree rooted at root without freezing it: for check,
// which compares a tree it expects to be quiet. proc "" means /proc.
func ReadLive(root int, proc string) (*pstree.Tree, error) {
	if proc == "" {
		proc = "/proc"
	}
	r := procfs.New(proc)
	exe, _ := os.Executable()
	var tr *pstree.Tree
	var err error
	if fast(r) {
		tr, _, err = readTreeWalk(proc, root, false, exe, frozenAs{})
	} else {
		var members []member
		if members, err = discover(r, root); err != nil {
			return nil, err
		}
		tr, err = readTree(r, members, exe, frozenAs{})
	}
	if err != nil {
		return nil, fmt.Errorf("read tree of pid %d: %w", root, err)
	}
	return tr, nil
}

// guardNamespaces opens the pid namespaces whose init is in the tree: the
// guard watches them and everything below. The root's own namespace is not
// one of them unless the root is its init (it holds tasks outside the tree).
//
// A task is its namespace's init when its innermost pid is 1, which only
// status tells; but status is the dearest file to read, so each member's
// namespace is told from its ns/pid link first, and status is read only
// until each namespace's init is found. That is one status for most
// namespaces: the init is created first in its namespace and comes before
// its descendants in the members' order (parents first). The root's own
// namespace needs only the root's: a namespace's init is created before
// anything else in it, so when the root is not the init, the init is no
// descendant of the root.
func guardNamespaces(r *procfs.Reader, members []member) ([]int, error) {
	var fds []int
	done := map[uint64]bool{} // namespaces whose init was found or cannot be in the tree
	for i, m := range members {
		ino, err := r.NSInode(m.pid, "pid")
		if err != nil {
			return fds, err
		}
		if done[ino] {
			continue
		}
		s, err := r.Status(m.pid)
		if err != nil {
			return fds, err
		}
		if s.NSpid[len(s.NSpid)-1] != 1 {
			if i == 0 {
				done[ino] = true // the root's namespace, and the root is not its init
			}
			continue
		}
		done[ino] = true
		fd, err := r.OpenNS(m.pid, "pid")
		if err != nil {
			return fds, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func pids(ms []member) []int {
	out := make([]int, len(ms))
	for i, m := range ms {
		out[i] = m.pid
	}
	return out
}

// diffMembers names what differs between two discoveries.
func diffMembers(a, b []member) []string {
	in := func(ms []member) map[member]bool {
		s := make(map[member]bool, len(ms))
		for _, m := range ms {
			s[m] = true
		}
		return s
	}
	sa, sb := in(a), in(b)
	var d []string
	for _, m := range a {
		if !sb[m] {
			d = append(d, fmt.Sprintf("pid %d left the tree", m.pid))
		}
	}
	for _, m := range b {
		if !sa[m] {
			d = append(d, fmt.Sprintf("pid %d joined the tree", m.pid))
		}
	}
	slices.Sort(d)
	return d
}

// thisKernel is the running kernel's release and kernel.pid_max (as this
// process sees it), recorded so that a restore elsewhere can name them.
func thisKernel() (release string, pidMax int) {
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	pidMax, _ = procfs.PidMax()
	return release, pidMax
}
