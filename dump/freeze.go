package dump

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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
	// groupStopped names the level-0 tids that were in group-stop before
	// the freeze (ptrace hides it: they show 't'); nil if not needed.
	groupStopped() map[int]bool
	// missed names live threads of tr the freeze did not stop (they
	// appeared after it); the attempt is then retried.
	missed(tr *pstree.Tree) []string
	String() string
}

// cgroupFreezer freezes cgroup v2 cgroups that hold the tree and nothing
// else (docs/kernel.md F10.1: one write, parents see nothing).
type cgroupFreezer struct{ dirs []string }

func (c *cgroupFreezer) String() string             { return "cgroup v2 freeze of " + strings.Join(c.dirs, ", ") }
func (c *cgroupFreezer) groupStopped() map[int]bool { return nil }

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
	mnt, err := cgroup2Mount()
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
			if p, err = r.Cgroup2(m.pid); err != nil || p == "" {
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
		ok, why := exclusive(mnt, p, in)
		if !ok {
			return nil, why
		}
		c.dirs = append(c.dirs, filepath.Join(mnt, p))
	}
	return c, ""
}

// exclusive reports whether every process in cgroup p (a path below the
// cgroup2 mount mnt) and below it is in the tree.
func exclusive(mnt, p string, in map[int]bool) (bool, string) {
	procs, err := cgroupProcs(mnt, p)
	if err != nil {
		return false, err.Error()
	}
	bad := -1
	for pid := range procs {
		if !in[pid] && (bad < 0 || pid < bad) {
			bad = pid
		}
	}
	if bad >= 0 {
		return false, fmt.Sprintf("cgroup %s also holds pid %d, which is not in the tree", filepath.Join(mnt, procs[bad]), bad)
	}
	return true, ""
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

func cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], nil
		}
	}
	return "", errors.New("no cgroup2 mount")
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
				return fmt.Errorf("freeze %s: not frozen after %v", d, timeout)
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
type ptraceFreezer struct {
	calls   chan func()
	seized  []int // tids, level 0
	leaders map[int]bool
	stopped map[int]bool
}

func (p *ptraceFreezer) String() string             { return "ptrace seize" }
func (p *ptraceFreezer) groupStopped() map[int]bool { return p.stopped }

func (p *ptraceFreezer) missed(tr *pstree.Tree) []string {
	seized := make(map[int]bool, len(p.seized))
	for _, tid := range p.seized {
		seized[tid] = true
	}
	var out []string
	for _, t := range tr.Tasks {
		if t.State != pstree.Zombie && !seized[t.PIDs[0]] {
			out = append(out, fmt.Sprintf("pid %d was not stopped", t.PIDs[0]))
		}
		for _, th := range t.Threads {
			if th.State != pstree.Zombie && !seized[th.TIDs[0]] {
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

// ptraceFreeze seizes and interrupts every live thread of members.
func ptraceFreeze(r *procfs.Reader, members []member, timeout time.Duration) (*ptraceFreezer, error) {
	p := &ptraceFreezer{calls: make(chan func()), leaders: map[int]bool{}, stopped: map[int]bool{}}
	go func() {
		runtime.LockOSThread() // never unlocked: see the type comment
		for f := range p.calls {
			f()
		}
	}()
	var err error
	p.do(func() { err = p.seizeAll(r, members, timeout) })
	if err != nil {
		p.thaw(false)
		return nil, err
	}
	return p, nil
}

func (p *ptraceFreezer) seizeAll(r *procfs.Reader, members []member, timeout time.Duration) error {
	for _, m := range members {
		tids, err := threadsOf(r, m.pid)
		if err != nil {
			return fmt.Errorf("freeze pid %d: %w", m.pid, err)
		}
		for _, tid := range tids {
			if err := unix.PtraceSeize(tid); err != nil {
				// Zombies cannot be seized (EPERM) and need no stopping;
				// only then is the thread's state worth reading.
				if err == unix.EPERM {
					st, serr := r.TaskStatus(m.pid, tid)
					if serr != nil {
						return fmt.Errorf("freeze pid %d thread %d: %w", m.pid, tid, serr)
					}
					if st.State == 'Z' || st.State == 'X' {
						continue
					}
				}
				if err == unix.ESRCH {
					err = fmt.Errorf("%w (%w)", procfs.ErrGone, err)
				}
				return fmt.Errorf("freeze pid %d: ptrace seize thread %d: %w", m.pid, tid, err)
			}
			p.seized = append(p.seized, tid)
			if tid == m.pid {
				p.leaders[tid] = true
			}
			if err := unix.PtraceInterrupt(tid); err != nil {
				return fmt.Errorf("freeze pid %d: ptrace interrupt thread %d: %w", m.pid, tid, err)
			}
		}
	}
	deadline := time.Now().Add(timeout)
	for _, tid := range p.seized {
		for {
			var ws unix.WaitStatus
			got, err := unix.Wait4(tid, &ws, unix.WALL|unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fmt.Errorf("freeze: wait for thread %d: %w", tid, err)
			}
			if got == tid {
				if !ws.Stopped() {
					return fmt.Errorf("freeze: thread %d exited while being stopped: %w", tid, procfs.ErrGone)
				}
				// PTRACE_INTERRUPT stops with SIGTRAP; a group-stop
				// (the task was stopped by SIGSTOP & co) with its signal.
				if ws.StopSignal() != unix.SIGTRAP {
					p.stopped[tid] = true
				}
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("freeze: thread %d did not stop within %v", tid, timeout)
			}
			time.Sleep(50 * time.Microsecond)
		}
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
	if n, err := p.Threads(); err != nil || n != 1 {
		return p.Tasks()
	}
	return []int{pid}, nil
}

func (p *ptraceFreezer) thaw(leaveStopped bool) error {
	var errs []error
	p.do(func() {
		for _, tid := range p.seized {
			sig := 0
			if leaveStopped && p.leaders[tid] {
				sig = int(unix.SIGSTOP) // CRIU's --leave-stopped: parents see it
			}
			_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(tid), 0, uintptr(sig), 0, 0)
			if e != 0 && e != unix.ESRCH {
				errs = append(errs, fmt.Errorf("ptrace detach thread %d: %w", tid, e))
			}
		}
		p.seized = nil
	})
	close(p.calls)
	return errors.Join(errs...)
}
