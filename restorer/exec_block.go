package restorer

import (
	"fmt"
	"slices"
	"strconv"
	"unsafe"

	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// The block is the one piece of memory the Go restorer and the builder
// processes share (they are CLONE_VM children of the restorer). It is
// mmap'ed, never Go heap: no Go pointers are ever stored in it, only
// integers and addresses inside the block itself. Builders read their steps
// from it and write results and futex words into it.

// header is at offset 0 of the block.
type header struct {
	cur       uint64 // index of the step whose turn it is
	goWake    uint32 // futex word the restorer sleeps on
	failed    uint32 // set by a builder whose step failed
	failStep  int64
	failErrno int64
	nsteps    int64
	base      uint64 // the block's own address, for sanity checks

	// The level-0 writer's check of a clone placed through the host
	// cursor (hostcheck.go): the pidfd's fdinfo path, prefix filled by
	// Execute, and the text read from it.
	fdinfoPath [40]byte
	fdinfoBuf  [512]byte

	// zeros stays all zero: SIG_DFL sigaction, empty sigset, RLIMIT 0,
	// a futex word that never changes.
	zeros       [128]byte
	lastPIDPath [32]byte
	parkText    [24]byte // the host cursor at the start, as text
	parkLen     int64
	// restorerFD is a pidfd for the restorer (in the fd table every
	// builder shares), -1 for none: a builder that waits polls it now and
	// then, so that a restorer killed outright (SIGKILL) does not leave
	// builders waiting forever for a turn. committed is set once the
	// restore is handed over: parked tasks then wait without bound.
	restorerFD int32
	committed  uint32
	// leaving is 1 + the proc that took credentials an unprivileged user
	// could ptrace and is leaving the shared memory (exec or exit) while
	// holding the token; the restorer passes the token on once it is gone
	// (builder_linux.go, passOrLeave). 0 for none.
	leaving int64
	// private is 1 when the restorer keeps the memory it shares with the
	// builders non-dumpable for the whole restore (it holds CAP_SYS_PTRACE:
	// builder_linux.go, setnsVia). Builders then never make it dumpable,
	// and a builder refused a pidfd setns asks the restorer to open the
	// namespace files: assist is 1 + the index of that builder's step, 0
	// for none.
	private uint32
	assist  int64
}

// procRec is one proc's slot.
type procRec struct {
	wake      uint32 // futex word: the token for this proc's next step
	alive     uint32 // CLONE_CHILD_CLEARTID: the kernel zeroes it at exec/exit
	pidfd     int32  // CLONE_PIDFD: filled by the kernel, -1 before
	execErr   int32  // errno of a failed execve, 0 otherwise
	firstStep int64  // first step this proc performs, -1 for none
	selfPid   int64  // its pid in its own namespace (for kill(self))
	// capability sets for the exec payload (caps.go); setCaps 0 leaves the
	// builder's own. capHdr and capData are capget/capset scratch space.
	setCaps, keepCaps      uint32
	capExact               uint32 // a zombie: capset permitted and effective too
	capLast                uint32 // /proc/sys/kernel/cap_last_cap
	capInh, capBnd, capAmb uint64
	capPrm, capEff         uint64
	capHdr                 [2]uint32 // version, pid
	capData                [6]uint32 // two halves of {effective, permitted, inheritable}
	// payload (addresses inside the block; 0 = none)
	path, argv, envp, cwd uint64
	groups                uint64
	ngroups               int64
	uid, gid              [3]uint32 // real, effective, saved
	setCreds              uint32
	noGroups              uint32 // setgroups is denied in its user ns: skip it
	stopSelf              uint32 // park instead of exec (stopped payload)
	subreaper             uint32 // PR_SET_CHILD_SUBREAPER before the payload
	// controlFD is a restored agent's end of its control socket (in the
	// shared fd table, close-on-exec), -1 for other procs: the builder
	// dups it to agentconn.ControlFD for its exec (agents.go).
	controlFD int32
	// markFD is the waiter mark (internal/waiter) for a proc that becomes a
	// waiter, -1 for others: the builder dups it to waiter.FD for its exec.
	markFD int32
	comm   [commLen + 1]byte // name of a zombie or parked task (comm.go)
	// setStdio set: stdio are the fds (in the shared table, -1: keep the
	// restorer's) the builder dups to 0, 1, 2 for its exec (stdio_linux.go).
	setStdio uint32
	stdio    [3]int32
}

// stepRec is one step in the block.
type stepRec struct {
	op        int64
	actor     int64
	nextSame  int64 // the next step of the same actor, -1 for none
	nextActor int64 // the actor of step i+1 (Restorer = -1; -2 after the last)
	into      int64 // proc whose pidfd names the pid ns to setns into, -1
	prewake   int64 // a proc to wake early (it spins until its turn), -1
	arg, arg2 int64
	waitPid   int64 // OpWait: the helper's pid in the actor's namespace
	child     int64 // OpClone: builderMain argument of the new task
	args      sys.CloneArgs
	setTID    [sys.MaxSetTID]int32 // pid_t, not u64 (internal/sys.SetTID)
	text      [24]byte             // OpLastPID: the number as text
	textLen   int64
	// OpLastPID: the proc whose level-0 pid the writer checks afterwards
	// (hostcheck.go), -1 for none, and that pid.
	check, checkPid int64
	// OpUserMap: up to three files (setgroups, uid_map, gid_map) to write:
	// NUL-terminated path and text addresses in the block, text lengths;
	// a 0 path is skipped.
	fpath, ftext [3]uint64
	flen         [3]int64
	// OpHostname: the names (at most 64 bytes each, __NEW_UTS_LEN).
	host, domain       [64]byte
	hostLen, domainLen int64
	comm               [commLen + 1]byte // OpThread: the thread's name (comm.go)
	named              uint32            // OpThread: futex word, 1 once it has it
	// A step that joins another proc's namespaces (into) and was refused
	// the pidfd setns: the namespace files the restorer opened for it, in
	// nsOrder, -1 for a kind not asked; nsErr is the restorer's errno;
	// nsOpened is the futex word the restorer sets to 1 when done.
	nsFD     [len(nsOrder)]int32
	nsErr    int64
	nsOpened uint32
	// OpThread: the thread's mailbox (builder_linux.go, serveThread). Its
	// task's builder puts a request in req (a step index, or reqCreds)
	// and bumps reqSeq; the thread does it, leaves the errno in reqErr
	// and bumps doneSeq. Both words are futexes.
	reqSeq, doneSeq uint32
	req, reqErr     int64
	// OpClone: the OpThread step of the actor's thread that clones (the
	// image's parent thread, stopped payload), -1 for the actor itself.
	byThread int64
}

const (
	headerSize  = (unsafe.Sizeof(header{}) + 63) &^ 63
	procRecSize = (unsafe.Sizeof(procRec{}) + 15) &^ 15
	stepRecSize = (unsafe.Sizeof(stepRec{}) + 15) &^ 15
	// stackSize is each builder's stack: its code is nosplit and only
	// makes raw syscalls, so a little is plenty.
	stackSize = 16 << 10
	// threadArg marks a builderMain argument that starts a parked thread.
	threadArg = 1 << 40
)

// block describes the layout; base is set once mapped. Only the accessors
// below compute addresses, always inside the mapping.
type block struct {
	mem          []byte
	base         unsafe.Pointer
	nprocs       int
	nsteps       int
	procsOff     uintptr
	stepsOff     uintptr
	strOff, strN uintptr
	stacksOff    uintptr
	nstacks      int
}

//go:nosplit
func hdrAt(base unsafe.Pointer) *header { return (*header)(base) }

//go:nosplit
func procAt(base unsafe.Pointer, off uintptr, i int64) *procRec {
	return (*procRec)(unsafe.Add(base, off+uintptr(i)*procRecSize))
}

//go:nosplit
func stepAt(base unsafe.Pointer, off uintptr, i int64) *stepRec {
	return (*stepRec)(unsafe.Add(base, off+uintptr(i)*stepRecSize))
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
