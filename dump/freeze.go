package dump

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// A freezer stops a tree while it is read and lets it go afterwards.
type freezer interface {
	// thaw lets the tree run again; leaveStopped leaves it stopped instead
	// (frozen cgroup, or SIGSTOP for ptrace).
	thaw(leaveStopped bool) error
	// frozenAs tells the reader what the frozen tasks look like.
	frozenAs() frozenAs
	// missed names live threads of tr the freeze did not stop (they
	// appeared after it); the attempt is then retried.
	missed(tr *pstree.Tree) []string
	String() string
}

// cgroupFreezer freezes cgroup v2 cgroups that hold the tree and nothing
// else (docs/kernel.md F10.1: one write, parents see nothing).
type cgroupFreezer struct{ dirs []string }

func (c *cgroupFreezer) String() string     { return "cgroup v2 freeze of " + strings.Join(c.dirs, ", ") }
func (c *cgroupFreezer) frozenAs() frozenAs { return frozenAs{frozen: true} }

// missed names the live tasks of tr that are not in the frozen cgroups:
// the cgroups were chosen from a discovery before the freeze, and a member
// may have moved out (or a new one been born elsewhere) since. Tasks born
// or moved into a frozen cgroup are frozen with it, whatever their pid.
func (c *cgroupFreezer) missed(tr *pstree.Tree) []string {
	frozen := map[int]bool{}
	for _, d := range c.dirs {
		procs, err := cgroupProcs(d, "")
		if err != nil {
			return []string{err.Error()}
		}
		for pid := range procs {
			frozen[pid] = true
		}
	}
	var out []string
	for _, t := range tr.Tasks {
		if t.State != pstree.Zombie && !frozen[t.PIDs[0]] {
			out = append(out, fmt.Sprintf("pid %d is not in a frozen cgroup", t.PIDs[0]))
		}
	}
	return out
}

// cgroupFor returns a cgroup freezer when the tree's tasks exclusively
// occupy their cgroup v2 cgroups, or nil (with the reason) when not.
func cgroupFor(r *procfs.Reader, members []member) (*cgroupFreezer, string) {
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		return nil, err.Error()
	}
	in := make(map[int]bool, len(members))
	for _, m := range members {
		in[m.pid] = true
	}
	// Trees usually sit in the root's cgroup and below it: the
	// cgroup.procs files there name the cgroup of most members at once
	// (not zombies: they are in no cgroup.procs), so only the others are
	// read one by one from /proc/PID/cgroup.
	var listed map[int]string
	if p, err := r.Cgroup2(members[0].pid); err == nil && p != "" && p != "/" {
		listed, _ = cgroupProcs(mnt, p) // on error, ask every member
	}
	paths := map[string]bool{}
	for _, m := range members {
		p, ok := listed[m.pid]
		if !ok {
			var err error
			p, err = r.Cgroup2(m.pid)
			if errors.Is(err, procfs.ErrGone) && m.pid != members[0].pid {
				// Reaped since it was found: not in the tree any more.
				// What the freeze stops is found again after it, and
				// a member outside the frozen cgroups is a miss.
				continue
			}
			if err != nil || p == "" {
				return nil, fmt.Sprintf("pid %d has no cgroup v2 path", m.pid)
			}
		}
		paths[p] = true
	}
	if in[os.Getpid()] {
		return nil, "the dumper is in the tree"
	}
	// Keep the topmost cgroups; descendants freeze with them.
	var tops []string
	for p := range paths {
		top := true
		for q := range paths {
			if q != p && (q == "/" || strings.HasPrefix(p, q+"/")) {
				top = false
			}
		}
		if top {
			tops = append(tops, p)
		}
	}
	c := &cgroupFreezer{}
	for _, p := range tops {
		if p == "/" {
			return nil, "tree is in the root cgroup"
		}
		ok, why := exclusive(r, mnt, p, in)
		if !ok {
			return nil, why
		}
		c.dirs = append(c.dirs, filepath.Join(mnt, p))
	}
	return c, ""
}

// exclusive reports whether every process in cgroup p (a path below the
// cgroup2 mount mnt) and below it is in the tree: one of in, or (the tree
// runs while this is checked) a descendant of one forked since, or gone.
func exclusive(r *procfs.Reader, mnt, p string, in map[int]bool) (bool, string) {
	procs, err := cgroupProcs(mnt, p)
	if err != nil {
		return false, err.Error()
	}
	bad := -1
	for pid := range procs {
		if !in[pid] && !joined(r, pid, in) && (bad < 0 || pid < bad) {
			bad = pid
		}
	}
	if bad >= 0 {
		return false, fmt.Sprintf("cgroup %s also holds pid %d, which is not in the tree", filepath.Join(mnt, procs[bad]), bad)
	}
	return true, ""
}

// joined reports whether pid is gone, or descends from a process of in
// (its parent chain, read from /proc, reaches one).
func joined(r *procfs.Reader, pid int, in map[int]bool) bool {
	for range 64 {
		st, err := r.Stat(pid)
		if errors.Is(err, procfs.ErrGone) {
			return true
		}
		if err != nil || st.PPid <= 1 {
			return false
		}
		if in[st.PPid] {
			return true
		}
		pid = st.PPid
	}
	return false
}

// cgroupProcs maps every process in cgroup p (a path below the cgroup2
// mount mnt, as /proc/PID/cgroup names it) and below to its cgroup.
func cgroupProcs(mnt, p string) (map[int]string, error) {
	top := filepath.Join(mnt, p)
	procs := map[int]string{}
	err := filepath.WalkDir(top, func(dir string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		cg := p + strings.TrimPrefix(dir, top)
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("%s/cgroup.procs: bad pid %q", dir, f)
			}
			procs[pid] = cg
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", top, err)
	}
	return procs, nil
}

func (c *cgroupFreezer) freeze(timeout time.Duration) error {
	for i, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("1"), 0); err != nil {
			c.dirs = c.dirs[:i+1]
			c.thaw(false)
			return fmt.Errorf("freeze %s: %w", d, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for _, d := range c.dirs {
		for {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.events"))
			if err == nil && bytes.Contains(b, []byte("frozen 1")) {
				break
			}
			if time.Now().After(deadline) {
				c.thaw(false)
				return fmt.Errorf("freeze %s: not frozen after %v: %w", d, timeout, ErrTimeout)
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	return nil
}

func (c *cgroupFreezer) thaw(leaveStopped bool) error {
	if leaveStopped {
		return nil
	}
	var errs []error
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.freeze"), []byte("0"), 0); err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// ptraceFreezer stops every thread with PTRACE_SEIZE + PTRACE_INTERRUPT, as
// CRIU does (docs/kernel.md F10.4): the parents see nothing, TracerPid shows
// while it lasts. All ptrace calls of a tracee must come from the tracing
// thread, so they run on one locked OS thread; it is never unlocked, so the
// thread dies with its goroutine and no tracer state leaks into the pool.
//
// The freeze runs top-down to a fixed point (docs/design.md, "Freezing"):
// a process's children are listed only once all its threads are stopped,
// so none of them is half-forked and none that exits can be reaped (it
// stays a zombie of its stopped parent); passes over the whole tree repeat
// until one seizes nothing new. Then nothing in the tree can move.
type ptraceFreezer struct {
	calls    chan func()
	seized   []int         // tids, level 0, in seize order
	traced   map[int]bool  // tids seized and not yet seen exiting
	ever     map[int]bool  // tids ever seized (a gone one is not seized again)
	reported map[int]bool  // tids whose stop was reported
	tgid     map[int]int   // tid -> its process
	procs    map[int]bool  // processes (tgids) with a seized thread
	stopped  map[int]bool  // tids that were in group-stop before the seize
	members  []member      // the tree at the fixed point, parents first
	timeout  time.Duration // for the stops, and the group-stops of leaveStopped
}

func (p *ptraceFreezer) String() string { return "ptrace seize" }
func (p *ptraceFreezer) frozenAs() frozenAs {
	return frozenAs{frozen: true, ptrace: true, stopped: p.stopped}
}

func (p *ptraceFreezer) missed(tr *pstree.Tree) []string {
	var out []string
	for _, t := range tr.Tasks {
		if t.State != pstree.Zombie && !p.traced[t.PIDs[0]] {
			out = append(out, fmt.Sprintf("pid %d was not stopped", t.PIDs[0]))
		}
		for _, th := range t.Threads {
			if th.State != pstree.Zombie && !p.traced[th.TIDs[0]] {
				out = append(out, fmt.Sprintf("thread %d of pid %d appeared", th.TIDs[0], t.PIDs[0]))
			}
		}
	}
	return out
}

func (p *ptraceFreezer) do(f func()) {
	done := make(chan struct{})
	p.calls <- func() { f(); close(done) }
	<-done
}

// maxFreezePasses bounds the passes over the tree: each pass after the
// first only finds tasks that joined while the previous one ran (a child
// made with CLONE_PARENT by a task not yet stopped, orphans reparented to
// a subreaper of the tree), so a tree that needs more never stops growing.
const maxFreezePasses = 8

// ptraceFreeze stops the tree rooted at root and returns the freezer, whose
// members are the tree as it stands stopped (with start times).
func ptraceFreeze(r *procfs.Reader, root int, timeout time.Duration) (*ptraceFreezer, error) {
	p := &ptraceFreezer{calls: make(chan func()), traced: map[int]bool{}, ever: map[int]bool{},
		reported: map[int]bool{}, tgid: map[int]int{}, procs: map[int]bool{}, stopped: map[int]bool{}, timeout: timeout}
	go func() {
		runtime.LockOSThread() // never unlocked: see the type comment
		for f := range p.calls {
			f()
		}
	}()
	var err error
	p.do(func() {
		deadline := time.Now().Add(timeout)
		for pass := 0; ; pass++ {
			if pass == maxFreezePasses {
				err = fmt.Errorf("freeze: the tree still grew after %d passes: %w", pass, errMoved)
				return
			}
			var grew bool
			if grew, err = p.pass(r, root, deadline); err != nil || !grew {
				return
			}
		}
	})
	if err != nil {
		p.thaw(false)
		return nil, err
	}
	return p, nil
}

// pass walks the tree from root, generation by generation: it seizes the
// processes not yet seized, waits until all their threads are stopped (or
// gone), then lists their children. It reports whether it seized anything.
func (p *ptraceFreezer) pass(r *procfs.Reader, root int, deadline time.Time) (grew bool, err error) {
	type proc struct{ pid, parent int }
	gen := []proc{{root, 0}}
	p.members = p.members[:0]
	var scan map[int][]int // children by parent, for kernels without children files
	withChildren := fast(r)
	for len(gen) > 0 {
		// Seize, then re-list each process's threads until no new one
		// shows up: a thread not yet stopped may have made another.
		for {
			n := 0
			for _, pr := range gen {
				k, err := p.seizeThreads(r, pr.pid)
				if err != nil {
					return grew, err
				}
				n += k
			}
			if n == 0 {
				break
			}
			grew = true
			if err := p.waitStops(r, deadline); err != nil {
				return grew, err
			}
		}
		// The generation is stopped: name its processes and list their
		// children.
		var next []proc
		for _, pr := range gen {
			st, err := r.Stat(pr.pid)
			if errors.Is(err, procfs.ErrGone) && pr.pid != root {
				continue // reaped before its seize: not in the tree any more
			}
			if err != nil {
				return grew, fmt.Errorf("freeze pid %d: %w", pr.pid, err)
			}
			if pr.pid != root && st.PPid != pr.parent {
				// Reaped and its pid reused, or reparented out of the
				// tree while its old parent was still running.
				continue
			}
			p.members = append(p.members, member{pr.pid, st.StartTime})
			var kids []int
			if withChildren {
				if kids, err = childrenOf(r, pr.pid); err != nil {
					return grew, fmt.Errorf("freeze pid %d: %w", pr.pid, err)
				}
			} else {
				if scan == nil {
					if scan, err = scanChildren(r); err != nil {
						return grew, err
					}
				}
				kids = scan[pr.pid]
			}
			slices.Sort(kids)
			for _, k := range kids {
				next = append(next, proc{k, pr.pid})
			}
		}
		gen = next
		scan = nil // the next generation's children are listed after its stop
	}
	return grew, nil
}

// childrenOf lists the children of every thread of pid.
func childrenOf(r *procfs.Reader, pid int) ([]int, error) {
	p, err := r.Open(pid)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	tids, err := procThreads(p)
	if err != nil {
		return nil, err
	}
	var kids []int
	for _, tid := range tids {
		k, err := p.Children(tid)
		if errors.Is(err, procfs.ErrGone) && tid != pid {
			continue // the thread exited; its children moved to another
		}
		if err != nil {
			return nil, err
		}
		kids = append(kids, k...)
	}
	return kids, nil
}

// scanChildren maps every process in the procfs to its children (the
// stat scan of discover).
func scanChildren(r *procfs.Reader) (map[int][]int, error) {
	pids, err := r.Pids()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	out := map[int][]int{}
	for _, pid := range pids {
		st, err := r.Stat(pid)
		if errors.Is(err, procfs.ErrGone) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[st.PPid] = append(out[st.PPid], pid)
	}
	return out, nil
}

// seizeThreads seizes and interrupts the threads of pid not yet seized and
// returns how many it seized. Zombies cannot be seized (EPERM) and need no
// stopping; a thread that is gone before its seize is skipped (its
// process's next listing no longer shows it).
func (p *ptraceFreezer) seizeThreads(r *procfs.Reader, pid int) (int, error) {
	tids, err := threadsOf(r, pid)
	if errors.Is(err, procfs.ErrGone) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("freeze pid %d: %w", pid, err)
	}
	n := 0
	for _, tid := range tids {
		if p.ever[tid] {
			continue
		}
		if err := unix.PtraceSeize(tid); err != nil {
			if err == unix.ESRCH {
				continue
			}
			if err == unix.EPERM {
				st, serr := r.TaskStatus(pid, tid)
				if errors.Is(serr, procfs.ErrGone) || (serr == nil && (st.State == 'Z' || st.State == 'X')) {
					continue
				}
				if serr == nil && st.TracerPid != 0 {
					return n, fmt.Errorf("freeze pid %d: thread %d is traced by pid %d", pid, tid, st.TracerPid)
				}
			}
			return n, fmt.Errorf("freeze pid %d: ptrace seize thread %d: %w", pid, tid, err)
		}
		p.seized = append(p.seized, tid)
		p.traced[tid], p.ever[tid], p.tgid[tid] = true, true, pid
		p.procs[pid] = true
		n++
		if err := unix.PtraceInterrupt(tid); err != nil && err != unix.ESRCH {
			return n, fmt.Errorf("freeze pid %d: ptrace interrupt thread %d: %w", pid, tid, err)
		}
	}
	return n, nil
}

// waitStops waits until every traced thread has stopped or exited. A
// thread that reports a signal instead (signal-delivery-stop: it had
// dequeued one before the interrupt) gets it back and stops for the
// interrupt next, as in CRIU. A thread that exits was past the point of no
// return before it could stop: it leaves the tree before the freeze is
// complete, which is no race (a process stays a zombie of its stopped
// parent, a thread just goes).
func (p *ptraceFreezer) waitStops(r *procfs.Reader, deadline time.Time) error {
	// Threads already stopped report nothing new: wait only for those
	// that have not reported since their seize.
	pending := map[int]bool{}
	for _, tid := range p.seized {
		if p.traced[tid] && !p.reported[tid] {
			pending[tid] = true
		}
	}
	nap := 20 * time.Microsecond
	for len(pending) > 0 {
		progress := false
		for tid := range pending {
			var ws unix.WaitStatus
			got, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err == unix.ECHILD {
				// Not our tracee any more (a non-leader thread that
				// exec'd took its leader's tid).
				delete(pending, tid)
				delete(p.traced, tid)
				progress = true
				continue
			}
			if err != nil {
				return fmt.Errorf("freeze: wait for thread %d: %w", tid, err)
			}
			if got != tid {
				continue
			}
			progress = true
			switch {
			case ws.Exited() || ws.Signaled():
				delete(pending, tid)
				delete(p.traced, tid)
			case ws.Stopped() && int(ws>>16) == unix.PTRACE_EVENT_STOP:
				// PTRACE_INTERRUPT stops with SIGTRAP; a group-stop
				// (the task was stopped by SIGSTOP & co) with its signal.
				if ws.StopSignal() != unix.SIGTRAP {
					p.stopped[tid] = true
				}
				delete(pending, tid)
				p.reported[tid] = true
			case ws.Stopped():
				// Signal-delivery-stop: deliver the signal; the pending
				// interrupt stops the thread before it runs user code.
				_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_CONT, uintptr(tid), 0, uintptr(ws.StopSignal()), 0, 0)
				if e != 0 && e != unix.ESRCH {
					return fmt.Errorf("freeze: pass signal %v to thread %d: %w", ws.StopSignal(), tid, e)
				}
			}
		}
		if progress {
			nap = 20 * time.Microsecond
			continue
		}
		if time.Now().After(deadline) {
			var late []string
			for tid := range pending {
				late = append(late, strconv.Itoa(tid))
			}
			slices.Sort(late)
			return fmt.Errorf("freeze: threads %s did not stop in time: %w", strings.Join(late, ", "), ErrTimeout)
		}
		// A traced group leader that exits before its threads reports
		// only once they are gone: as a zombie it needs no stop.
		for tid := range pending {
			if st, err := r.Stat(tid); err == nil && (st.State == 'Z' || st.State == 'X') {
				delete(pending, tid)
				p.reported[tid] = true
			}
		}
		time.Sleep(nap)
		nap = min(2*nap, time.Millisecond)
	}
	return nil
}

// threadsOf lists the threads of pid; a single-threaded process (the
// common case) is told by the link count of its task/, without a listing.
func threadsOf(r *procfs.Reader, pid int) ([]int, error) {
	p, err := r.Open(pid)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return procThreads(p)
}

// procThreads is threadsOf through an open /proc/PID.
func procThreads(p *procfs.Proc) ([]int, error) {
	if n, err := p.Threads(); err != nil || n != 1 {
		return p.Tasks()
	}
	return []int{p.Pid()}, nil
}

// thaw detaches every thread. leaveStopped first sends each process
// SIGSTOP, as CRIU's --leave-stopped does (parents see it): queued while
// the threads are still in ptrace-stop, it is the first thing each one
// meets when detached, so none runs user code in between. (A signal given
// to PTRACE_DETACH would not do: it is dropped when the tracee is in the
// interrupt's PTRACE_EVENT_STOP.)
func (p *ptraceFreezer) thaw(leaveStopped bool) error {
	var errs []error
	p.do(func() {
		if leaveStopped {
			// Members only: a pid seized and gone since may name a
			// stranger now; a member cannot be reaped while its
			// parent is stopped.
			for _, m := range p.members {
				pid := m.pid
				if !p.procs[pid] {
					continue
				}
				if err := unix.Kill(pid, unix.SIGSTOP); err != nil && err != unix.ESRCH {
					errs = append(errs, fmt.Errorf("stop pid %d: %w", pid, err))
				}
			}
		}
		for _, tid := range p.seized {
			_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(tid), 0, 0, 0, 0)
			if e != 0 && e != unix.ESRCH {
				errs = append(errs, fmt.Errorf("ptrace detach thread %d: %w", tid, e))
			}
		}
	})
	close(p.calls)
	if leaveStopped && len(errs) == 0 {
		errs = append(errs, p.settle(p.timeout))
	}
	p.seized = nil
	return errors.Join(errs...)
}

// settle waits until every thread detached with SIGSTOP pending shows 'T':
// between the detach and its group-stop a thread shows 'R' for a moment
// (running kernel code only), and whoever reads the tree after the dump
// should find it stopped.
func (p *ptraceFreezer) settle(timeout time.Duration) error {
	r := procfs.New("/proc")
	member := make(map[int]bool, len(p.members))
	for _, m := range p.members {
		member[m.pid] = true
	}
	deadline := time.Now().Add(timeout)
	for _, tid := range p.seized {
		if !p.traced[tid] {
			continue
		}
		for {
			st, err := r.Stat(tid) // /proc/TID works for any thread
			if err != nil || st.State == 'T' || st.State == 'Z' || st.State == 'X' || !member[p.tgid[tid]] {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("leave stopped: thread %d is still %c after %v: %w", tid, st.State, timeout, ErrTimeout)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	return nil
}
