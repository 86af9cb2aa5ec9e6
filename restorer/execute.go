package restorer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/probe"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/waiter"
	"golang.org/x/sys/unix"
)

// ExecOptions tune Execute; the zero value is the default.
type ExecOptions struct {
	// Timeout bounds the whole restore (default 60s plus 20ms a proc): a
	// builder that stops answering aborts the restore.
	Timeout time.Duration
	// Attempts bounds the retries after ErrHostRace (default 5).
	Attempts int
	// AgentTimeout bounds each request to a restored agent (default
	// DefaultAgentTimeout): an agent that does not answer aborts the
	// restore.
	AgentTimeout time.Duration
	// Stdio, where set, is what the restored programs get as fd 0, 1 and
	// 2 instead of the restorer's own (a detached restore gives /dev/null,
	// so that nothing restored holds its caller's pipe or terminal). The
	// files stay the caller's; the restorer's own fds are untouched.
	// Zombies and stopped payloads have no program and keep nothing
	// (builder_stdio_linux.go).
	Stdio [3]*os.File
}

// Restored is a committed restore.
type Restored struct {
	// Root is the root task's pid in the restorer's namespace.
	Root int
	// HostPIDs maps, with Options.HostPIDsAny, each task's level-0 pid in
	// the image (and each dead session or group leader's) to the one the
	// kernel gave it; nil otherwise.
	HostPIDs map[int]int
	rootFD   *sys.FD
}

// RootPidfd is a pidfd for the root task (to wait for it, or signal it
// without a pid race), -1 after Close. The caller owns it.
func (r *Restored) RootPidfd() int { return r.rootFD.Int() }

// Close closes the root's pidfd; the restored tree goes on running.
func (r *Restored) Close() error { return r.rootFD.Close() }

// Execute carries out a plan on the real kernel. It must run as root with
// CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE in the initial user namespace,
// in the pid namespace the image calls level 0. It verifies every placement
// through pidfds and, on any error, kills and reaps every process it created
// before returning: nothing is left behind. While it runs the calling
// process is a child subreaper (orphans of a failed restore come back to it
// to be reaped).
func Execute(p *Plan, opt ExecOptions) (*Restored, error) {
	return ExecuteContext(context.Background(), p, opt)
}

// ErrInterrupted: the restore was cancelled (the restorer got SIGINT,
// SIGTERM or SIGHUP) and rolled back.
var ErrInterrupted = errors.New("restore interrupted")

// ExecuteContext is Execute that stops when ctx is done: whatever it
// created is killed and reaped, the host cursor put back, and the error
// wraps ErrInterrupted with ctx's cause.
func ExecuteContext(ctx context.Context, p *Plan, opt ExecOptions) (*Restored, error) {
	if !p.Options.HostPIDsAny {
		defer parkHostCursor(p)() // exec_hostcursor.go
	}
	if opt.Attempts == 0 {
		opt.Attempts = 5
	}
	var err error
	for a := 1; a <= opt.Attempts; a++ {
		var res *Restored
		res, err = execute(ctx, p, opt)
		if err == nil || !errors.Is(err, ErrHostRace) || ctx.Err() != nil {
			return res, err
		}
	}
	return nil, fmt.Errorf("%d attempts: %w", opt.Attempts, err)
}

// ErrHostRace: a process outside the tree took a level-0 pid between the
// restorer's write of the host's ns_last_pid and the clone (the host cursor
// is shared with every process on the machine, F1.3). The attempt was
// rolled back completely; Execute retries. Such an error is ErrPIDTaken
// too, and names the process that took the pid while it is there.
var ErrHostRace = errors.New("host pid cursor raced with an unrelated fork")

// executeMu serialises Executes in one process: builders find the block
// through package variables (builder_linux.go), and the restorer's
// subreaper flag, dumpable flag and the host cursor are per process.
var executeMu sync.Mutex

func execute(ctx context.Context, p *Plan, opt ExecOptions) (*Restored, error) {
	executeMu.Lock()
	defer executeMu.Unlock()
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("execute: the builder trampoline exists only for amd64, not %s: %w", runtime.GOARCH, ErrUnsupported)
	}
	if err := requireCapabilities(); err != nil {
		return nil, err
	}
	// The restorer's own status, read once: its bounding set for the
	// precheck, its ids and capabilities for the builders' credentials.
	self, err := procfs.New("").Status(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("read the restorer's own status: %w", err)
	}
	if !skipPrecheck {
		if err := precheck(p, &self); err != nil {
			return nil, err
		}
	}
	if opt.Timeout == 0 {
		opt.Timeout = 60*time.Second + time.Duration(len(p.Procs))*20*time.Millisecond
	}
	if opt.AgentTimeout == 0 {
		opt.AgentTimeout = DefaultAgentTimeout
	}
	links, err := openAgentLinks(p)
	if err != nil {
		return nil, err
	}
	mark := -1
	for i := range p.Procs {
		if p.becomesWaiter(i) {
			if mark, err = waiter.NewMark(); err != nil {
				closeAgentLinks(links)
				return nil, fmt.Errorf("waiter mark: %w", err)
			}
			break
		}
	}
	el := &execLinks{}
	defer el.remove()
	b, err := newBlock(p, &self, links, mark, el)
	if err != nil {
		closeAgentLinks(links)
		closeMark(mark)
		return nil, err
	}
	setStdio(b, opt.Stdio) // builder_stdio_linux.go
	h := b.hdr()
	h.keepFDs = keepFDsBound() // exec_fds.go
	h.leaveSecs = leaveCheckFor(len(p.Procs))
	defer runtime.KeepAlive(opt.Stdio)
	tx := &tx{p: p, b: b, links: links, mark: mark, agentTimeout: opt.AgentTimeout, hostCursor: -1, el: el,
		ctx: ctx, deadline: time.Now().Add(opt.Timeout)}
	tx.watchRestorer()
	// Builders share our mm: a credential change in one that died before
	// resetting it would leave this process non-dumpable (no pidfd setns
	// into anything for the next Execute).
	defer tx.restoreDumpable()
	// The host cursor is moved around the image's pids during the restore;
	// it is put back afterwards so unrelated forks do not land among them.
	if v, err := procfs.ReadLastPID(); err == nil {
		tx.hostCursor = v
		h.parkLen = int64(copy(h.parkText[:], strconv.Itoa(v)))
	}
	defer tx.restoreHostCursor()
	defer tx.rollbackUnlessCommitted()
	if err := tx.keepPrivate(); err != nil {
		return nil, err
	}
	// PR_GET_CHILD_SUBREAPER stores the flag through its pointer argument
	// (its return value is 0).
	var old int32
	err = unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&old)), 0, 0, 0)
	if err == nil && old == 0 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err == nil {
			tx.resetSubreaper = true
		}
	}
	// A cancelled ctx wakes run, which then rolls everything back.
	defer context.AfterFunc(ctx, tx.wakeRestorer)()
	if err := tx.run(); err != nil {
		return nil, err
	}
	return tx.commit()
}

func closeMark(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// ErrTimeout: the restore made no progress before its deadline
// (ExecOptions.Timeout) and was rolled back. A restored agent that does not
// answer in time wraps agentconn.ErrTimeout instead.
var ErrTimeout = errors.New("restore timed out")

// ErrCapability: the restorer lacks a capability it needs.
var ErrCapability = errors.New("missing capability")

// requireCapabilities refuses early, and by name, when the restorer cannot
// place pids at all: clone3 set_tid and ns_last_pid need CAP_SYS_ADMIN or
// CAP_CHECKPOINT_RESTORE in the user namespace owning the level-0 pid
// namespace (docs/kernel.md F1.2, F2), which for the restorer is its own;
// the kernel would only say EPERM at the first clone.
func requireCapabilities() error {
	if !hasCap(unix.CAP_SYS_ADMIN) && !hasCap(unix.CAP_CHECKPOINT_RESTORE) {
		return fmt.Errorf("restore needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in its own user namespace to choose pids (run it as root, or inside the target namespace through its agent: restore --agent): %w", ErrCapability)
	}
	return nil
}

// hasCap says whether the calling thread has capability c in its
// effective set.
func hasCap(c uint) bool { return probe.HasCap(int(c)) }

// dropInheritableCaps empties the calling thread's ambient and inheritable
// sets, which every task it creates would otherwise inherit: a restorer
// started with ambient CAP_CHECKPOINT_RESTORE (agent/listen.go, a restore
// for another uid) must not hand it on. The image's own sets are set by
// each builder afterwards (builder_creds_linux.go).
func dropInheritableCaps() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read own capabilities: %w", err)
	}
	if data[0].Inheritable == 0 && data[1].Inheritable == 0 {
		return nil
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	return nil
}

// skipPrecheck lets tests reach the kernel's own EEXIST mid-restore.
var skipPrecheck = false

// precheck refuses, before the first clone, what depends on the live
// machine rather than on the image: a root led from outside the tree by a
// session or group this restorer is not in, a capability outside its
// bounding set, and a level-0 pid the image needs that is in use, named
// (clone3 would fail with EEXIST anyway; this only makes the error
// precise. Inner levels are fresh namespaces.)
func precheck(p *Plan, self *procfs.Status) error {
	if err := checkOutsideLeaders(p); err != nil {
		return err
	}
	if err := checkCapBnd(p.Tree, self.CapBnd); err != nil {
		return err
	}
	settle := time.Now().Add(2 * time.Second)
	check := func(pid int, what string) error {
		if pid <= 0 || p.Options.HostPIDsAny {
			return nil
		}
		waitYoungHolder(pid, settle) // exec_hostcursor.go
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
			if procfs.StatusField(b, "Tgid") == strconv.Itoa(os.Getpid()) {
				return fmt.Errorf("%s: pid %d at level 0 is taken by this restorer itself (the host cursor was among the image's pids when it started): %w", what, pid, ErrPIDTaken)
			}
			if h := holderOf(pid); h != "" {
				return fmt.Errorf("%s: pid %d at level 0 is taken by %s: %w", what, pid, h, ErrPIDTaken)
			}
		}
		return nil
	}
	for i := range p.Procs {
		if err := check(p.Procs[i].PIDs[0], p.name(i)); err != nil {
			return err
		}
	}
	for _, s := range p.Steps {
		if s.Op == OpThread {
			if err := check(s.PIDs[0], "thread of "+p.name(s.Actor)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkOutsideLeaders refuses a root whose session or group was led from
// outside the tree, unless the restorer is in that very session and group
// or Options.ShellJob accepts its own instead: the root is born into the
// restorer's (its cursor writer clones it with CLONE_PARENT), and a task
// cannot join a session it is not born in (setsid makes a new one).
func checkOutsideLeaders(p *Plan) error {
	if p.Options.ShellJob {
		return nil
	}
	root := &p.Tree.Tasks[0]
	own, err := unix.Getsid(0)
	if err != nil {
		return fmt.Errorf("getsid: %w", err)
	}
	for _, c := range []struct {
		what     string
		want, is int
	}{{"session", root.SIDs[0], own}, {"process group", root.PGIDs[0], unix.Getpgrp()}} {
		if c.want == root.PID() || c.want == c.is {
			continue
		}
		return fmt.Errorf("the root (pid %d) was in %s %d, led from outside the tree by %s; this restorer is in %s %d. Restore from a process of that %s, or pass --shell-job to put the tree in the restorer's: %w",
			root.PID(), c.what, c.want, outsideLeader(c.want), c.what, c.is, c.what, ErrOutsideLeader)
	}
	return nil
}

// outsideLeader names the level-0 process that leads session or group id.
func outsideLeader(id int) string {
	if h := holderOf(id); h != "" {
		return "pid " + strconv.Itoa(id) + ", " + h
	}
	return "pid " + strconv.Itoa(id) + ", which no longer exists"
}
