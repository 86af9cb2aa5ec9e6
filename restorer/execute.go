package restorer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/probe"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/waiter"
	"github.com/nsinit/nsinit/pstree"
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
	// (stdio_linux.go).
	Stdio [3]*os.File
}

// Restored is a committed restore.
type Restored struct {
	// Root is the root task's pid in the restorer's namespace, RootFD a
	// pidfd for it (the caller owns it).
	Root   int
	RootFD *sys.FD
}

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
	defer parkHostCursor(p)() // hostcheck.go
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

func execute(ctx context.Context, p *Plan, opt ExecOptions) (*Restored, error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("execute: the builder trampoline exists only for amd64, not %s: %w", runtime.GOARCH, ErrUnsupported)
	}
	if err := requireCapabilities(); err != nil {
		return nil, err
	}
	if !skipPrecheck {
		if err := precheck(p); err != nil {
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
	b, err := newBlock(p, links, mark, el)
	if err != nil {
		closeAgentLinks(links)
		closeMark(mark)
		return nil, err
	}
	setStdio(b, opt.Stdio) // stdio_linux.go
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
		h := b.hdr()
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
// each builder afterwards (caps_linux.go).
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

// precheck refuses early, with the pid named, when a level-0 pid the image
// needs is in use. (clone3 would fail with EEXIST anyway; this only makes
// the error precise. Inner levels are fresh namespaces.)
func precheck(p *Plan) error {
	settle := time.Now().Add(2 * time.Second)
	check := func(pid int, what string) error {
		if pid <= 0 {
			return nil
		}
		waitYoungHolder(pid, settle) // hostcheck.go
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
			if statusField(string(b), "Tgid") == strconv.Itoa(os.Getpid()) {
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

// newBlock lays the plan out in a fresh mapping.
func newBlock(p *Plan, links map[int]*agentLink, mark int, el *execLinks) (*block, error) {
	b := &block{nprocs: len(p.Procs), nsteps: len(p.Steps)}
	nthreads := 0
	for _, s := range p.Steps {
		if s.Op == OpThread {
			nthreads++
		}
	}
	b.nstacks = b.nprocs + nthreads
	// strings: exec payload paths, argv, envp, cwd, groups
	var strs []byte
	var ptrs []int // offsets in strs where an address (into strs) is stored
	type procStrs struct{ path, argv, envp, cwd, groups int }
	ps := make([]procStrs, len(p.Procs))
	creds := make([]procCreds, len(p.Procs)) // caps.go
	align := func() {
		for len(strs)%8 != 0 {
			strs = append(strs, 0)
		}
	}
	cstr := func(s string) int {
		o := len(strs)
		strs = append(strs, s...)
		strs = append(strs, 0)
		return o
	}
	vec := func(ss []string) int {
		offs := make([]int, len(ss))
		for i, s := range ss {
			offs[i] = cstr(s)
		}
		align()
		o := len(strs)
		for _, so := range offs {
			ptrs = append(ptrs, len(strs))
			strs = unsafeAppendU64(strs, uint64(so))
		}
		strs = unsafeAppendU64(strs, 0) // NULL terminator (not relocated)
		return o
	}
	if p.Options.Payload == PayloadExec {
		for i := range p.Procs {
			t := p.Procs[i].Task
			if t < 0 || p.Tree.Tasks[t].State == pstree.Zombie {
				continue
			}
			tk := &p.Tree.Tasks[t] // has an Exe: checkPayload
			// An agent or a waiter execs this nsinit with its own argv
			// (agents.go, internal/waiter).
			exe, argv := tk.Exe, tk.Argv
			if p.becomesAgent(i) || p.becomesWaiter(i) {
				exe = p.Options.AgentExe
			}
			path, err := el.path(i, exe, tk.Comm) // its name: comm.go
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name(i), err)
			}
			ps[i].path = cstr(path)
			if len(argv) == 0 {
				argv = []string{exe}
			}
			ps[i].argv = vec(argv)
			ps[i].envp = vec(tk.Env)
			ps[i].cwd = -1
			if tk.Cwd != "" {
				ps[i].cwd = cstr(tk.Cwd)
			}
		}
	}
	// Every task's image credentials: taken before the exec payload, by a
	// zombie before it dies, by a stopped payload (and its threads) before
	// it parks (builder_linux.go, stopCreds).
	for i := range p.Procs {
		t := p.Procs[i].Task
		if t < 0 {
			continue
		}
		var err error
		if creds[i], err = credsOf(p, t); err != nil {
			return nil, err
		}
		align()
		ps[i].groups = len(strs)
		for _, g := range creds[i].groups {
			strs = unsafeAppendU32(strs, g)
		}
		align()
	}
	// user namespace map files, per OpUserMap step
	type mapFiles struct{ path, text, n [3]int }
	maps := map[int]*mapFiles{}
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Op != OpUserMap {
			continue
		}
		u := s.NS[pstree.UserNS]
		um, gm, err := userMapText(p, u, s.Actor)
		if err != nil {
			return nil, err
		}
		sg := "allow"
		if !p.Tree.Namespace(u).SetgroupsAllowed {
			sg = "deny"
		}
		f := &mapFiles{}
		for j, kv := range [3][2]string{{"setgroups", sg}, {"uid_map", um}, {"gid_map", gm}} {
			f.path[j] = cstr(fmt.Sprintf("/proc/%d/%s", p.Procs[s.Target].PIDs[0], kv[0]))
			f.text[j], f.n[j] = cstr(kv[1]), len(kv[1])
		}
		maps[i] = f
	}
	b.procsOff = headerSize
	b.stepsOff = b.procsOff + uintptr(b.nprocs)*procRecSize
	b.strOff = (b.stepsOff + uintptr(b.nsteps)*stepRecSize + 63) &^ 63
	b.strN = uintptr(len(strs))
	b.stacksOff = (b.strOff + b.strN + 4095) &^ 4095
	size := int(b.stacksOff) + b.nstacks*stackSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map the builder block (%d bytes): %w", size, err)
	}
	b.mem = mem
	b.base = unsafe.Pointer(&mem[0])
	base := uintptr(b.base)
	copy(mem[b.strOff:], strs)
	for _, o := range ptrs {
		a := (*uint64)(unsafe.Pointer(&mem[b.strOff+uintptr(o)]))
		*a += uint64(base + b.strOff)
	}
	addr := func(o int) uint64 { return uint64(base + b.strOff + uintptr(o)) }

	h := hdrAt(b.base)
	h.nsteps = int64(b.nsteps)
	h.base = uint64(base)
	copy(h.lastPIDPath[:], "/proc/sys/kernel/ns_last_pid\x00")

	// per-proc records
	last := make([]int64, b.nprocs)
	for i := range p.Procs {
		r := procAt(b.base, b.procsOff, int64(i))
		r.firstStep, r.pidfd, r.alive, r.controlFD, r.markFD = -1, -1, 1, -1, -1
		if l := links[i]; l != nil {
			r.controlFD = int32(l.child.Fd())
		}
		if p.becomesWaiter(i) {
			r.markFD = int32(mark)
		}
		last[i] = -1
		pr := &p.Procs[i]
		r.selfPid = int64(pr.PIDs[len(pr.PIDs)-1])
		if p.Options.Payload == PayloadStopped {
			r.stopSelf = 1
		}
		if p.isSubreaper(i) {
			r.subreaper = 1
		}
		if ps[i].argv != 0 || ps[i].path != 0 {
			r.path, r.argv, r.envp = addr(ps[i].path), addr(ps[i].argv), addr(ps[i].envp)
			if ps[i].cwd >= 0 {
				r.cwd = addr(ps[i].cwd)
			}
		}
		creds[i].put(r, addr(ps[i].groups))
		putComm(&r.comm, taskComm(p, i))
	}
	// steps
	stack := 0
	nextStack := func() uint64 {
		s := uint64(base + b.stacksOff + uintptr(stack*stackSize))
		stack++
		return s
	}
	byThread := threadCloners(p) // threads.go
	for i := range p.Steps {
		s := &p.Steps[i]
		r := stepAt(b.base, b.stepsOff, int64(i))
		r.op, r.actor, r.into, r.nextSame, r.prewake, r.byThread = int64(s.Op), int64(s.Actor), -1, -1, -1, -1
		for j := range r.nsFD {
			r.nsFD[j] = -1
		}
		r.arg, r.arg2 = int64(s.Arg), int64(s.Arg2)
		r.nextActor = -2
		if i+1 < len(p.Steps) {
			r.nextActor = int64(p.Steps[i+1].Actor)
		}
		if s.Actor >= 0 {
			if last[s.Actor] < 0 {
				procAt(b.base, b.procsOff, int64(s.Actor)).firstStep = int64(i)
			} else {
				stepAt(b.base, b.stepsOff, last[s.Actor]).nextSame = int64(i)
			}
			last[s.Actor] = int64(i)
		}
		switch s.Op {
		case OpClone:
			t := &p.Procs[s.Target]
			n := 0
			if n, err = setTIDOf(p, s, t.PIDs, r); err != nil {
				b.unmap()
				return nil, fmt.Errorf("step %d: %w", i, err)
			}
			tr := procAt(b.base, b.procsOff, int64(s.Target))
			r.child = int64(s.Target)
			if j, ok := byThread[i]; ok {
				r.byThread = int64(j)
			}
			r.args = sys.CloneArgs{
				Flags:      sys.CLONE_VM | sys.CLONE_FILES | sys.CLONE_PIDFD | sys.CLONE_CHILD_CLEARTID,
				PidFD:      uint64(uintptr(unsafe.Pointer(&tr.pidfd))),
				ChildTID:   uint64(uintptr(unsafe.Pointer(&tr.alive))),
				ExitSignal: uint64(unix.SIGCHLD),
				Stack:      nextStack(),
				StackSize:  stackSize,
			}
			if n > 0 {
				r.args.SetTID, r.args.SetTIDSize = uint64(uintptr(unsafe.Pointer(&r.setTID[0]))), uint64(n)
			}
			if s.NewPIDNS {
				r.args.Flags |= sys.CLONE_NEWPID
			}
			if s.NS[pstree.UserNS] != 0 {
				r.args.Flags |= unix.CLONE_NEWUSER // its maps are a later step's
			}
			if s.AsSibling {
				r.args.Flags |= sys.CLONE_PARENT
				r.args.ExitSignal = 0
			}
			if s.Into != 0 {
				r.into = -1
				for j := range p.Procs {
					if p.Procs[j].NS == s.Into && p.Procs[j].PIDs[len(p.Procs[j].PIDs)-1] == 1 {
						r.into = int64(j)
					}
				}
				if r.into < 0 {
					b.unmap()
					return nil, fmt.Errorf("step %d: pid ns %d has no init to setns through: %w", i, s.Into, ErrUnsupported)
				}
			}
		case OpThread:
			n := 0
			if n, err = setTIDOf(p, s, s.PIDs, r); err != nil {
				b.unmap()
				return nil, fmt.Errorf("step %d: %w", i, err)
			}
			r.child = threadArg | int64(i) // the thread reads its name here
			putComm(&r.comm, threadComm(p, s))
			r.args = sys.CloneArgs{
				Flags:     sys.CLONE_VM | sys.CLONE_FS | sys.CLONE_FILES | sys.CLONE_SIGHAND | sys.CLONE_THREAD | sys.CLONE_SYSVSEM,
				Stack:     nextStack(),
				StackSize: stackSize,
			}
			if n > 0 {
				r.args.SetTID, r.args.SetTIDSize = uint64(uintptr(unsafe.Pointer(&r.setTID[0]))), uint64(n)
			}
		case OpSetPFC:
			r.into = int64(s.Target) // -1: unshare
		case OpUnshare, OpSetns:
			r.into = int64(s.Target)
			r.arg = int64(s.NS.CloneFlags())
		case OpUserMap:
			f := maps[i]
			for j := range f.path {
				r.fpath[j], r.ftext[j] = addr(f.path[j]), addr(f.text[j])
				r.flen[j] = int64(f.n[j])
			}
		case OpHostname:
			h, d := hostnameOf(p, s.Actor)
			if len(h) > len(r.host) || len(d) > len(r.domain) {
				b.unmap()
				return nil, fmt.Errorf("step %d: hostname %q / domain name %q longer than 64 bytes: %w", i, h, d, ErrBadImage)
			}
			r.hostLen, r.domainLen = int64(copy(r.host[:], h)), int64(copy(r.domain[:], d))
		case OpLastPID:
			if s.Arg == ParkHostCursor {
				r.textLen = -1
			} else {
				r.textLen = int64(copy(r.text[:], strconv.Itoa(s.Arg)))
			}
		case OpWait:
			if s.Actor >= 0 {
				a, t := &p.Procs[s.Actor], &p.Procs[s.Target]
				r.waitPid = int64(t.PIDs[len(a.PIDs)-1])
			}
		}
	}
	// The host cursor is written by the writer helper and used by the next
	// step's clone: wake the cloner one step early so it is spinning on a
	// CPU when the cursor is set, and the window in which an unrelated fork
	// can take the pid is as short as a hand-over between two running
	// processes.
	for i := 1; i+1 < len(p.Steps); i++ {
		s, n := &p.Steps[i], &p.Steps[i+1]
		if s.Op == OpLastPID && s.Actor == p.HostWriter && s.Arg >= 0 && n.Actor >= 0 && n.Actor != s.Actor {
			stepAt(b.base, b.stepsOff, int64(i-1)).prewake = int64(n.Actor)
		}
	}
	setHostChecks(p, b)
	bBase, bProcsOff, bStepsOff = b.base, b.procsOff, b.stepsOff
	return b, nil
}

// setTIDOf fills step record r's set_tid array for pids (outermost
// first): only the innermost level (see Placement), or every level on a
// kernel with Features.MultiLevelSetTID. It returns set_tid_size.
func setTIDOf(p *Plan, s *Step, pids []int, r *stepRec) (int, error) {
	if !s.SetTID {
		return 0, nil
	}
	v := slices.Clone(pids)
	for l := 0; l < s.SetFrom && l < len(v); l++ {
		v[l] = 0 // the kernel takes these from the cursors
	}
	n, err := sys.SetTID(r.setTID[:], v)
	if err == nil && n > 1 && !p.Options.Features.MultiLevelSetTID {
		err = fmt.Errorf("%d set_tid levels without MultiLevelSetTID", n)
	}
	return n, err
}

func unsafeAppendU64(b []byte, v uint64) []byte {
	var x [8]byte
	*(*uint64)(unsafe.Pointer(&x[0])) = v
	return append(b, x[:]...)
}

func unsafeAppendU32(b []byte, v uint32) []byte {
	var x [4]byte
	*(*uint32)(unsafe.Pointer(&x[0])) = v
	return append(b, x[:]...)
}

func (b *block) hdr() *header { return hdrAt(b.base) }

func (b *block) unmap() {
	if b.mem != nil {
		_ = unix.Munmap(b.mem)
		b.mem, b.base = nil, nil
	}
}

// tx owns every process Execute creates (one owner of rollback): committed, or
// rolled back.
type tx struct {
	p              *Plan
	b              *block
	committed      bool
	resetSubreaper bool
	private        bool  // keepPrivate made the shared memory non-dumpable
	lastStep       []int // last step of each proc
	hostCursor     int   // host ns_last_pid before the restore, -1 unknown
	links          map[int]*agentLink
	mark           int // the waiter mark (internal/waiter), -1 for none
	agentTimeout   time.Duration
	el             *execLinks // comm.go
	ctx            context.Context
	deadline       time.Time // of the whole restore (ExecOptions.Timeout)
	selfFD         int       // the pidfd in hdr().restorerFD, -1 for none
}

// watchRestorer gives the builders a pidfd for this process, so that
// they notice when it is gone (builder_linux.go, waitOrLeave).
func (t *tx) watchRestorer() {
	t.selfFD = -1
	h := t.hdr()
	h.restorerFD = -1
	if fd, err := unix.PidfdOpen(os.Getpid(), 0); err == nil {
		t.selfFD = fd
		h.restorerFD = int32(fd)
	}
}

// wakeRestorer makes run look at the state again now, not at its next
// periodic check.
func (t *tx) wakeRestorer() {
	h := t.hdr()
	atomic.AddUint32(&h.goWake, 1)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWake, 1<<30, 0, 0, 0)
}

// expired is the error of a wait that must end: the restore was cancelled
// (ErrInterrupted) or its deadline passed; nil otherwise.
func (t *tx) expired() error {
	if t.ctx.Err() != nil {
		return fmt.Errorf("%w: %v", ErrInterrupted, context.Cause(t.ctx))
	}
	if time.Now().After(t.deadline) {
		return fmt.Errorf("no progress before the deadline: %w", ErrTimeout)
	}
	return nil
}

func (t *tx) restoreHostCursor() {
	if t.hostCursor >= 0 {
		_ = writeLastPID(t.hostCursor)
	}
}

func (t *tx) hdr() *header { return hdrAt(t.b.base) }

func (t *tx) proc(i int) *procRec { return procAt(t.b.base, t.b.procsOff, int64(i)) }

// run drives the plan: it performs the restorer's own steps when their turn
// comes and otherwise sleeps until a builder wakes it, a builder fails, a
// builder dies, or the deadline passes.
func (t *tx) run() error {
	h := t.hdr()
	n := len(t.p.Steps)
	for {
		cur := int(atomic.LoadUint64(&h.cur))
		if atomic.LoadUint32(&h.failed) != 0 {
			return t.stepError(int(h.failStep), uintptr(h.failErrno))
		}
		if t.ctx.Err() != nil {
			return t.expired()
		}
		if cur >= n {
			if err := t.waitPayloads(); err != nil {
				return err
			}
			return t.greetAgents(t.agentTimeout)
		}
		if s := &t.p.Steps[cur]; s.Actor == Restorer {
			if err := t.restorerStep(cur); err != nil {
				return fmt.Errorf("step %d (%s): %w", cur, t.p.describe(s), err)
			}
			advanceGo(t.b.base, t.b.stepsOff, int64(cur))
			continue
		}
		v := atomic.LoadUint32(&h.goWake)
		if int(atomic.LoadUint64(&h.cur)) != cur {
			continue
		}
		if a := atomic.LoadInt64(&h.assist); a != 0 {
			atomic.StoreInt64(&h.assist, 0)
			t.openNamespaces(int(a - 1))
			continue
		}
		if l := atomic.LoadInt64(&h.leaving); l != 0 {
			if err := t.passForLeaver(cur, int(l-1)); err != nil {
				return err
			}
			continue
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("step %d (%s by %s): %w", cur, t.p.describe(&t.p.Steps[cur]), t.p.name(t.p.Steps[cur].Actor), err)
		}
		if err := t.checkAlive(); err != nil {
			return err
		}
		// A raw wait keeps this thread's P: the runtime has no reason to
		// start a new thread (which would take a host pid) meanwhile.
		ts := unix.NsecToTimespec(int64(50 * time.Millisecond))
		unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&h.goWake)), futexWait, uintptr(v), uintptr(unsafe.Pointer(&ts)), 0, 0)
	}
}

// keepPrivate makes the memory the restorer shares with every builder
// non-dumpable for the whole restore when a builder would otherwise be a
// way into it (privateReason). While the shared mm is dumpable, a process
// of the same uid in the same user namespace whose capabilities cover the
// builder's, or one with CAP_SYS_PTRACE in the builder's user namespace
// (its owner), passes the kernel's ptrace check on the builder
// (docs/kernel.md F8.4) and with it reads and writes the restorer's
// memory: root's. Non-dumpable, only a caller with CAP_SYS_PTRACE in the
// restorer's own user namespace passes. The builders that thereby lose
// their own access to their fellows (those in child user namespaces) get
// namespace files from the restorer instead (builder_linux.go, setnsVia).
//
// Otherwise the memory stays dumpable, as it was: a builder that takes the
// image's ids at its last step leaves at once (passOrLeave), and zombies die
// dumpable, which a reader of their /proc files without CAP_SYS_PTRACE in
// the initial user namespace needs (docs/kernel.md F8.4).
//
// A restorer without CAP_SYS_PTRACE could not open the namespace files
// either: it refuses such a plan.
func (t *tx) keepPrivate() error {
	why := privateReason(t.p, uint32(unix.Geteuid()))
	if why == "" && forcePrivate {
		why = "forced (tests)"
	}
	if why == "" {
		// Stopped payloads of an earlier private restore may still share
		// this process's memory: it stays private for them.
		d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		if err != nil || d == 1 || !hasCap(unix.CAP_SYS_PTRACE) {
			return nil
		}
		why = "this process is not dumpable"
	}
	if !hasCap(unix.CAP_SYS_PTRACE) {
		return fmt.Errorf("%s: the restorer cannot keep its memory from that uid without CAP_SYS_PTRACE: %w", why, ErrCapability)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("make the builders' memory non-dumpable: %w", err)
	}
	t.hdr().private = 1
	t.private = true
	return nil
}

// forcePrivate makes every restore keep its memory private (tests).
var forcePrivate bool

// privateReason says which builder would hold, while it shares the
// restorer's memory, credentials another uid could ptrace it with: one
// that switches to another uid in the restorer's own user namespace (its
// user namespaces are then that uid's), or a stopped payload that waits
// there, forever, with its image's ids. "" for none. A builder inside a
// user namespace the restore created is out of reach of every process
// outside it: such a namespace is owned by the restorer's uid, and so is
// the top of every chain of them (docs/kernel.md F8.4).
func privateReason(p *Plan, euid uint32) string {
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Op != OpSetCreds || !ownUserNS(p.Tree, s.NS[pstree.UserNS]) || uint32(s.Arg) == euid {
			continue
		}
		return fmt.Sprintf("step %d (%s by %s) takes uid %d", i, p.describe(s), p.name(s.Actor), s.Arg)
	}
	if p.Options.Payload != PayloadStopped {
		return ""
	}
	for i := range p.Procs {
		ti := p.Procs[i].Task
		if ti < 0 {
			continue
		}
		tk := &p.Tree.Tasks[ti]
		if tk.State == pstree.Zombie || !ownUserNS(p.Tree, tk.NS[pstree.UserNS]) {
			continue
		}
		c := tk.Creds
		for _, id := range []uint32{c.UID, c.EUID, c.SUID, c.FSUID} {
			if id != euid {
				return fmt.Sprintf("%s stops with uid %d", p.name(i), id)
			}
		}
		// Same uid, fewer capabilities: a process of that uid whose
		// capabilities cover the task's passes the check too (F8.4).
		if prm, eff, ok := ownCaps(); !ok || c.CapPrm&prm != prm || c.CapEff&eff != eff {
			return fmt.Sprintf("%s stops with fewer capabilities than the restorer", p.name(i))
		}
	}
	return ""
}

// ownCaps reads the calling thread's permitted and effective capabilities.
func ownCaps() (prm, eff uint64, ok bool) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, 0, false
	}
	prm = uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	eff = uint64(data[0].Effective) | uint64(data[1].Effective)<<32
	return prm, eff, true
}

// ownUserNS says whether u is the restorer's own user namespace: the
// image's ambient one (or none).
func ownUserNS(tr *pstree.Tree, u pstree.NSID) bool {
	ns := tr.Namespace(u)
	return ns == nil || ns.Ambient
}

// restoreDumpable makes this process dumpable again after the restore
// (builders that changed credentials may have left it not), unless it kept
// the memory private and stopped payloads stay in it: they share it as
// long as they live.
func (t *tx) restoreDumpable() {
	if t.private && t.committed && t.p.Options.Payload == PayloadStopped {
		return
	}
	_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
}

// openNamespaces opens, for step i, the namespace files of the proc the
// step joins, which its builder was refused through the pidfd
// (builder_linux.go, setnsVia), and hands them over in the step's record.
func (t *tx) openNamespaces(i int) {
	r := stepAt(t.b.base, t.b.stepsOff, int64(i))
	flags := uintptr(sys.CLONE_NEWPID)
	if r.op == int64(OpSetns) {
		flags = uintptr(r.arg)
	}
	if err := t.openNamespaceFiles(r, flags); err != nil {
		for j, fd := range r.nsFD {
			if fd >= 0 {
				unix.Close(int(fd))
				r.nsFD[j] = -1
			}
		}
		var errno unix.Errno
		if !errors.As(err, &errno) {
			errno = unix.EPERM
		}
		r.nsErr = int64(errno)
	}
	atomic.StoreUint32(&r.nsOpened, 1)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&r.nsOpened)), futexWake, 1, 0, 0, 0)
}

func (t *tx) openNamespaceFiles(r *stepRec, flags uintptr) error {
	if r.into < 0 || r.into >= int64(len(t.p.Procs)) {
		return unix.EINVAL
	}
	pidfd := int(atomic.LoadInt32(&t.proc(int(r.into)).pidfd))
	nspid, err := sys.FdinfoNSpid(pidfd)
	if err != nil {
		return err
	}
	if len(nspid) == 0 || nspid[0] <= 0 {
		return unix.ESRCH // not visible in the procfs at /proc
	}
	pid := nspid[0]
	for j, flag := range nsOrder {
		if flags&flag == 0 {
			continue
		}
		kind, ok := pstree.KindOfCloneFlag(uint64(flag))
		if !ok {
			return unix.EINVAL
		}
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, kind.ProcName()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		r.nsFD[j] = int32(fd)
	}
	// The pid still named the proc when its files were opened: it cannot
	// have been reused while the pidfd's task is alive.
	return unix.PidfdSendSignal(pidfd, 0, nil, 0)
}

// passForLeaver ends step cur for proc i, which took credentials that made
// the shared mm non-dumpable and is leaving it (builder_linux.go,
// passOrLeave): once it has, the mm is made dumpable again for the other
// builders' pidfd setns and /proc writes, and the token goes on.
func (t *tx) passForLeaver(cur, i int) error {
	if err := t.waitCleared(&t.proc(i).alive); err != nil {
		return fmt.Errorf("step %d: %s leaving the restorer's memory: %w", cur, t.p.name(i), err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("step %d: make the builders' memory dumpable again: %w", cur, err)
	}
	atomic.StoreInt64(&t.hdr().leaving, 0)
	advanceGo(t.b.base, t.b.stepsOff, int64(cur))
	return nil
}

// advanceGo is advance for the restorer's own steps.
func advanceGo(base unsafe.Pointer, stepsOff uintptr, i int64) {
	advance(base, stepAt(base, stepsOff, i), i)
}

// checkAlive fails when a proc died before its last step (killed from
// outside, or crashed).
func (t *tx) checkAlive() error {
	if t.lastStep == nil {
		t.lastStep = make([]int, len(t.p.Procs))
		for j, s := range t.p.Steps {
			if s.Actor >= 0 {
				t.lastStep[s.Actor] = j
			}
		}
	}
	var dead []int
	for i := range t.p.Procs {
		r := t.proc(i)
		if atomic.LoadInt32(&r.pidfd) >= 0 && atomic.LoadUint32(&r.alive) == 0 {
			dead = append(dead, i)
		}
	}
	// A proc clears its word only after passing the token of its last
	// step, so reading the current step after the words is race free. A
	// leaver (passOrLeave) clears it while still holding the token, but
	// names itself in leaving before: read after the words, it is seen.
	cur := int(atomic.LoadUint64(&t.hdr().cur))
	leaver := int(atomic.LoadInt64(&t.hdr().leaving)) - 1
	for _, i := range dead {
		if i == leaver {
			continue
		}
		if j := t.lastStep[i]; j >= cur {
			return fmt.Errorf("%s died before step %d (%s)", t.p.name(i), j, t.p.describe(&t.p.Steps[j]))
		}
	}
	return nil
}

func (t *tx) stepError(i int, e uintptr) error {
	if i < 0 || i >= len(t.p.Steps) {
		return fmt.Errorf("builder failure at step %d: errno %d", i, e)
	}
	s := &t.p.Steps[i]
	what := fmt.Sprintf("step %d (%s by %s)", i, t.p.describe(s), t.p.name(s.Actor))
	if e&errMisplaced != 0 {
		return t.misplaced(i, int(e&^errMisplaced))
	}
	if e&errHelperStatus != 0 {
		return fmt.Errorf("%s: helper exited with status %#x", what, e&0xffff)
	}
	err := error(unix.Errno(e))
	if s.Op == OpClone && err == unix.EEXIST {
		pids := t.p.Procs[s.Target].PIDs
		if h := holderOf(pids[0]); h != "" {
			return fmt.Errorf("%s: pid %d at level 0 is taken by %s: %w: %w", what, pids[0], h, ErrPIDTaken, err)
		}
		return fmt.Errorf("%s: one of pids %v (outermost first) is in use: %w: %w", what, pids, ErrPIDTaken, err)
	}
	if s.Op == OpThread && err == unix.EEXIST {
		return fmt.Errorf("%s: one of tids %v is in use: %w: %w", what, s.PIDs, ErrPIDTaken, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// restorerStep performs a step whose actor is the Go restorer.
func (t *tx) restorerStep(i int) error {
	s := &t.p.Steps[i]
	switch s.Op {
	case OpClone:
		return t.cloneRoot(i)
	case OpVerify:
		if err := t.verify(); err != nil {
			return err
		}
		return t.resolveWaits()
	case OpNetConfig:
		return t.netConfig(s)
	case OpLastPID:
		if s.Arg == ParkHostCursor {
			return writeLastPID(t.hostCursor)
		}
		return writeLastPID(s.Arg)
	case OpWait:
		fd := int(t.proc(s.Target).pidfd)
		// Polled, not a blocking wait: a helper that never exits must not
		// keep the restore from its deadline or from a cancel.
		for !pidfdReadable(fd) {
			if err := t.expired(); err != nil {
				return fmt.Errorf("reap %s: %w", t.p.name(s.Target), err)
			}
		}
		reaped, st, err := sys.WaitPidfd(fd, 0)
		if err != nil || !reaped {
			return fmt.Errorf("reap %s: %w", t.p.name(s.Target), err)
		}
		if st != 0 {
			return fmt.Errorf("%s exited with status %#x", t.p.name(s.Target), int(st))
		}
		return nil
	case OpKill:
		r := t.proc(s.Target)
		if t.p.Options.Payload == PayloadExec && s.Arg == int(unix.SIGSTOP) {
			// a stopped task of the image: stop it once it runs its payload
			if err := t.waitCleared(&r.alive); err != nil {
				return err
			}
		}
		if err := sys.PidfdKill(int(r.pidfd), unix.Signal(s.Arg)); err != nil {
			return err
		}
		return t.waitSignalled(s.Target, unix.Signal(s.Arg))
	}
	return fmt.Errorf("the restorer cannot perform %v", s.Op)
}

// pidfdReadable waits up to 50 ms for the process of pidfd to exit and
// says whether it has.
func pidfdReadable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 50)
	return err == nil && n > 0
}

// writeLastPID sets the restorer's own pid namespace cursor (level 0).
var writeLastPID = procfs.WriteLastPID

// cloneRoot creates the root task from a locked thread with every signal
// blocked, so the child starts with all signals blocked.
func (t *tx) cloneRoot(i int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := dropInheritableCaps(); err != nil {
		return err
	}
	old := sys.BlockAllSignals()
	r := stepAt(t.b.base, t.b.stepsOff, int64(i))
	_, e := clone3(uintptr(unsafe.Pointer(&r.args)), sys.CloneArgsSize, uintptr(r.child))
	sys.RestoreSignals(old)
	if e != 0 {
		return t.stepError(i, e)
	}
	return nil
}

// verify checks every placement through the pidfds (F9.1): fdinfo NSpid
// read through the host procfs is race free. Threads are checked through
// /proc/<tid>/status (their task is parked, so they cannot go away).
func (t *tx) verify() error {
	for i := range t.p.Procs {
		want := t.p.Procs[i].PIDs
		got, err := sys.FdinfoNSpid(int(t.proc(i).pidfd))
		if err != nil {
			return fmt.Errorf("verify %s: %w", t.p.name(i), err)
		}
		if len(got) != len(want) {
			return fmt.Errorf("verify %s: placed at %v", t.p.name(i), got)
		}
		for l := range want {
			if want[l] != 0 && got[l] != want[l] {
				err := fmt.Errorf("verify %s: placed at %v: wrong pid %d at level %d", t.p.name(i), got, got[l], l)
				if l == 0 {
					return t.hostPIDError(err, want[0])
				}
				return err
			}
		}
	}
	for _, s := range t.p.Steps {
		if s.Op != OpThread {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", t.p.Procs[s.Actor].PIDs[0], s.PIDs[0]))
		if err != nil {
			return t.hostPIDError(fmt.Errorf("verify thread %v of %s: %w", s.PIDs, t.p.name(s.Actor), err), s.PIDs[0])
		}
		if got := statusField(string(st), "NSpid"); got != joinInts(s.PIDs) {
			return fmt.Errorf("verify thread %v of %s: placed at %s", s.PIDs, t.p.name(s.Actor), got)
		}
	}
	return nil
}

// resolveWaits fills in, for each helper whose pid the kernel chose in its
// reaper's namespace (a 0 in the plan, see Proc.PIDs), the number the
// reaper's wait4 names, read from the helper's pidfd. Every wait comes
// after the verification, and a builder reads its step only once it has
// the token, which this restorer step passes on.
func (t *tx) resolveWaits() error {
	for i := t.p.Verify + 1; i < len(t.p.Steps); i++ {
		s := &t.p.Steps[i]
		r := stepAt(t.b.base, t.b.stepsOff, int64(i))
		if s.Op != OpWait || s.Actor < 0 || r.waitPid != 0 {
			continue
		}
		got, err := sys.FdinfoNSpid(int(t.proc(s.Target).pidfd))
		l := len(t.p.Procs[s.Actor].PIDs) - 1
		if err == nil && l >= len(got) {
			err = fmt.Errorf("placed at %v, no pid at level %d", got, l)
		}
		if err != nil {
			return fmt.Errorf("pid of %s for %s to reap: %w", t.p.name(s.Target), t.p.name(s.Actor), err)
		}
		r.waitPid = int64(got[l])
	}
	return nil
}

// hostPIDError classifies a wrong level-0 placement. The precheck found
// the wanted pid free, so an unrelated fork took it during the restore
// (ErrHostRace, retried; ErrPIDTaken too), naming the process that holds
// it when there still is one.
func (t *tx) hostPIDError(err error, pid int) error {
	h := holderOf(pid)
	if h == "" || t.ours(pid) {
		return fmt.Errorf("%w: pid %d at level 0 was taken, and no process outside the restore holds it now: %w: %w", err, pid, ErrHostRace, ErrPIDTaken)
	}
	return fmt.Errorf("%w: pid %d at level 0 is taken by %s: %w: %w", err, pid, h, ErrHostRace, ErrPIDTaken)
}

// ours says whether level-0 pid belongs to a proc this restore created.
func (t *tx) ours(pid int) bool {
	for i := range t.p.Procs {
		if fd := t.proc(i).pidfd; fd >= 0 {
			if got, err := sys.FdinfoNSpid(int(fd)); err == nil && got[0] == pid {
				return true
			}
		}
	}
	return false
}

// waitPayloads waits until every builder whose last step leaves the
// restorer's memory has left it (its CLONE_CHILD_CLEARTID word cleared):
// exec payloads, and tasks that exit. Passing on the turn token is the last
// thing they do in that memory, not the last thing they run: returning
// before they are gone let the restorer's memory (their stacks) be reused
// under a task still dying - it died of SIGSEGV instead of its recorded
// signal. Image zombies are then awaited until /proc shows them as zombies,
// so what the caller reads is final. Exec failures are reported.
func (t *tx) waitPayloads() error {
	for _, s := range t.p.Steps {
		switch {
		case s.Op == OpExit:
		case s.Op == OpPayload && t.p.Options.Payload == PayloadExec:
		default:
			continue
		}
		r := t.proc(s.Actor)
		if err := t.waitCleared(&r.alive); err != nil {
			return fmt.Errorf("final step of %s: %w", t.p.name(s.Actor), err)
		}
		if s.Op == OpExit {
			if ti := t.p.Procs[s.Actor].Task; ti >= 0 && t.p.Tree.Tasks[ti].State == pstree.Zombie {
				if err := t.waitSignalled(s.Actor, unix.SIGKILL); err != nil {
					return err
				}
			}
			continue
		}
		if e := atomic.LoadInt32(&r.execErr); e != 0 {
			tk := &t.p.Tree.Tasks[t.p.Procs[s.Actor].Task]
			return fmt.Errorf("exec payload of %s (%s): %w", t.p.name(s.Actor), tk.Exe, unix.Errno(e))
		}
		if err := t.waitExecDone(t.p.Procs[s.Actor].PIDs[0]); err != nil {
			return fmt.Errorf("exec payload of %s: %w", t.p.name(s.Actor), err)
		}
	}
	return nil
}

// waitExecDone waits until the exec of level-0 pid has set up the new
// program: its command line is there. The cleared CLONE_CHILD_CLEARTID
// word only says that the old mm was dropped; the name and the arguments
// come later in the exec, and whoever reads /proc right after the restore
// (nsinit check, a test, a user) must see the program, not a builder
// half-way through its execve. A task that exited or died meanwhile is
// done too.
func (t *tx) waitExecDone(pid int) error {
	dir := "/proc/" + strconv.Itoa(pid)
	for {
		if b, err := os.ReadFile(dir + "/cmdline"); err != nil || len(b) > 0 {
			return nil
		}
		if b, err := os.ReadFile(dir + "/stat"); err != nil || procState(b) == 'Z' {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("pid %d: no command line after its exec: %w", pid, err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func (t *tx) waitCleared(w *uint32) error {
	for {
		v := atomic.LoadUint32(w)
		if v == 0 {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("waiting for it to leave the restorer's memory: %w", err)
		}
		ts := unix.NsecToTimespec(int64(50 * time.Millisecond))
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(v), uintptr(unsafe.Pointer(&ts)), 0, 0)
	}
}

// waitSignalled waits until a SIGSTOP took effect (state T) or a SIGKILL
// (or any death) made a zombie (state Z), read through the host procfs.
func (t *tx) waitSignalled(p int, sig unix.Signal) error {
	want := byte('T')
	if sig == unix.SIGKILL {
		want = 'Z'
	}
	path := fmt.Sprintf("/proc/%d/stat", t.p.Procs[p].PIDs[0])
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s after %v: %w", t.p.name(p), sig, err)
		}
		if st := procState(b); st == want {
			return nil
		}
		if err := t.expired(); err != nil {
			return fmt.Errorf("%s: state %q after %v, want %q: %w", t.p.name(p), procState(b), sig, want, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// commit hands the tree over: it closes every pidfd but the root's.
func (t *tx) commit() (*Restored, error) {
	res := &Restored{Root: t.p.Procs[0].PIDs[0]}
	for i := range t.p.Procs {
		fd := int(t.proc(i).pidfd)
		if fd < 0 {
			continue
		}
		if i == 0 {
			res.RootFD = sys.NewFD(fd)
		} else {
			_ = unix.Close(fd)
		}
	}
	t.committed = true
	atomic.StoreUint32(&t.hdr().committed, 1)
	t.closeSelfFD()
	closeAgentLinks(t.links)
	closeMark(t.mark)
	t.restoreSubreaper()
	// Parked processes (stopped payload) still run builder code in the
	// block; it must stay mapped for them.
	if t.p.Options.Payload == PayloadExec {
		t.b.unmap()
	}
	return res, nil
}

func (t *tx) restoreSubreaper() {
	if t.resetSubreaper {
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		t.resetSubreaper = false
	}
}

// rollbackUnlessCommitted kills every created process (SIGKILL through its
// pidfd, last created first) and reaps each one: directly when it is our
// child or becomes one (we are a subreaper), else by waiting until its
// parent or its dying namespace init reaped it. Then the block goes.
func (t *tx) rollbackUnlessCommitted() {
	if t.committed || t.b == nil {
		return
	}
	closeAgentLinks(t.links)
	closeMark(t.mark)
	var fds []int
	for i := len(t.p.Procs) - 1; i >= 0; i-- {
		if fd := int(atomic.LoadInt32(&t.proc(i).pidfd)); fd >= 0 {
			fds = append(fds, fd)
			_ = sys.PidfdKill(fd, unix.SIGKILL)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	pending := fds
	for len(pending) > 0 && time.Now().Before(deadline) {
		var next []int
		for _, fd := range pending {
			// __WALL: a CLONE_PARENT clone has no exit signal.
			reaped, _, err := sys.WaitPidfd(fd, unix.WNOHANG|unix.WALL)
			if reaped {
				continue
			}
			if err != nil {
				if _, err := sys.FdinfoNSpid(fd); errors.Is(err, sys.ErrReaped) {
					continue
				}
			}
			next = append(next, fd)
		}
		pending = next
		if len(pending) > 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
	t.restoreSubreaper()
	if len(pending) == 0 {
		t.closeSelfFD()
		t.b.unmap()
	}
}

// closeSelfFD closes the restorer's own pidfd once no builder waits on it.
func (t *tx) closeSelfFD() {
	if t.selfFD >= 0 {
		unix.Close(t.selfFD)
		t.selfFD = -1
	}
}
