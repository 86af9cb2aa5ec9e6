package restorer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// This file lays a plan out in the block (exec_block.go): first the string
// area is collected in Go memory (strArea), then the block is mapped and
// filled, one named pass per kind of record.

// strArea collects the strings and arrays builders read: exec paths, argv
// and envp vectors, cwds, supplementary groups, user namespace map files.
// Offsets are relative to the area; vectors hold offsets until relocate
// turns them into addresses once the block is mapped.
type strArea struct {
	buf  []byte
	ptrs []int // offsets in buf holding an offset that relocate makes an address
}

func (a *strArea) align() {
	for len(a.buf)%8 != 0 {
		a.buf = append(a.buf, 0)
	}
}

// cstr appends s with its NUL and returns its offset.
func (a *strArea) cstr(s string) int {
	o := len(a.buf)
	a.buf = append(a.buf, s...)
	a.buf = append(a.buf, 0)
	return o
}

// vec appends ss as a NULL-terminated array of string pointers (argv,
// envp) and returns the array's offset.
func (a *strArea) vec(ss []string) int {
	offs := make([]int, len(ss))
	for i, s := range ss {
		offs[i] = a.cstr(s)
	}
	a.align()
	o := len(a.buf)
	for _, so := range offs {
		a.ptrs = append(a.ptrs, len(a.buf))
		a.buf = unsafeAppendU64(a.buf, uint64(so))
	}
	a.buf = unsafeAppendU64(a.buf, 0) // NULL terminator (not relocated)
	return o
}

// u32s appends v as an 8-aligned array and returns its offset.
func (a *strArea) u32s(v []uint32) int {
	a.align()
	o := len(a.buf)
	for _, x := range v {
		a.buf = unsafeAppendU32(a.buf, x)
	}
	a.align()
	return o
}

// procStrs are one proc's offsets in the string area (0: none; cwd -1: none).
type procStrs struct{ path, argv, envp, cwd, root, groups, mounts, nmounts int }

// mapFiles are an OpUserMap step's three writes: setgroups, uid_map,
// gid_map (path, text and length of each).
type mapFiles struct{ path, text, n [3]int }

// layout is what newBlock collects before mapping the block.
type layout struct {
	p     *Plan
	strs  strArea
	procs []procStrs
	creds []procCreds       // exec_creds.go
	maps  map[int]*mapFiles // by OpUserMap step
	// mountWhat: each mounter's actions (exec_mounts.go), for errors.
	mountWhat map[int][]act
}

// newBlock lays the plan out in a fresh mapping: the string area first,
// then the header, one record per proc and one per step.
func newBlock(p *Plan, self *procfs.Status, links map[int]*agentLink, mark int, el *execLinks) (*block, error) {
	l := &layout{p: p, procs: make([]procStrs, len(p.Procs)), creds: make([]procCreds, len(p.Procs)), maps: map[int]*mapFiles{},
		mountWhat: map[int][]act{}}
	if err := l.addExecStrings(el); err != nil {
		return nil, err
	}
	if err := l.addMounts(); err != nil {
		return nil, err
	}
	if err := l.addCreds(self); err != nil {
		return nil, err
	}
	if err := l.addUserMaps(); err != nil {
		return nil, err
	}
	b, err := l.mapBlock()
	if err != nil {
		return nil, err
	}
	b.mountWhat = l.mountWhat
	l.writeProcs(b, links, mark)
	if err := l.writeSteps(b); err != nil {
		b.unmap()
		return nil, err
	}
	l.setPrewake(b)
	setHostChecks(p, b)  // exec_hostcursor.go
	layoutHostPIDs(p, b) // hostpids.go
	setBuilderBlock(b)
	return b, nil
}

// addExecStrings adds what the exec payload runs: each live task's
// program path (a link carrying its name: exec_comm.go), argv, envp, cwd.
func (l *layout) addExecStrings(el *execLinks) error {
	p := l.p
	if p.Options.Payload != PayloadExec {
		return nil
	}
	for i := range p.Procs {
		t := p.Procs[i].Task
		if t < 0 || p.Tree.Tasks[t].State == pstree.Zombie {
			continue
		}
		tk := &p.Tree.Tasks[t] // has an Exe: checkPayload
		// An agent or a waiter execs this nsinit with its own argv
		// (exec_agents.go, internal/waiter).
		exe, argv := tk.Exe, tk.Argv
		nsinit := p.becomesAgent(i) || p.becomesWaiter(i)
		if nsinit {
			exe = p.Options.AgentExe
		}
		ps := &l.procs[i]
		// An agent or a waiter runs this nsinit, from this root.
		chroot := !nsinit && tk.RootElsewhere && p.Options.Root != ""
		cwd := tk.Cwd
		if chroot {
			exe, cwd = pathInRoot(tk.Root, exe), pathInRoot(tk.Root, cwd)
		}
		path := exe
		if !chroot {
			// Under its recorded name (exec_comm.go). Not in a new
			// root, where Exe is a path and the link would be outside:
			// there it runs under its base name.
			var err error
			if path, err = el.path(i, exe, tk.Comm); err != nil {
				return fmt.Errorf("%s: %w", p.name(i), err)
			}
		}
		ps.path = l.strs.cstr(path)
		if chroot {
			ps.root = l.strs.cstr(p.Options.Root) // never offset 0: path is first
			// Always an absolute chdir after the chroot: the builder's
			// cwd is outside the new root until then.
			if !strings.HasPrefix(cwd, "/") {
				cwd = "/" + cwd
			}
		}
		if len(argv) == 0 {
			argv = []string{exe}
		}
		ps.argv = l.strs.vec(argv)
		ps.envp = l.strs.vec(tk.Env)
		ps.cwd = -1
		if cwd != "" {
			ps.cwd = l.strs.cstr(cwd)
		}
	}
	return nil
}

// pathInRoot is path p, as the dumper saw it, inside root, the task's root
// directory as the dumper saw it: a chroot in the dumper's mount namespace
// shows as its full path, and so do the task's exe and cwd; a root in
// another mount namespace (pivot_root) shows as "/", and the paths are
// already inside it.
func pathInRoot(root, p string) string {
	switch {
	case root == "" || root == "/" || p == "":
		return p
	case p == root:
		return "/"
	case strings.HasPrefix(p, root+"/"):
		return p[len(root):]
	}
	return p
}

// addCreds adds every task's image credentials: taken before the exec
// payload, by a zombie before it dies, by a stopped payload (and its
// threads) before it parks (builder_linux.go, stopCreds).
func (l *layout) addCreds(self *procfs.Status) error {
	switched := switchedIDs(l.p)
	for i := range l.p.Procs {
		t := l.p.Procs[i].Task
		if t < 0 {
			continue
		}
		var err error
		if l.creds[i], err = credsOf(l.p, t, self, switched[i]); err != nil {
			return err
		}
		l.procs[i].groups = l.strs.u32s(l.creds[i].groups)
	}
	return nil
}

// addUserMaps adds the files each OpUserMap step writes.
func (l *layout) addUserMaps() error {
	p := l.p
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Op != OpUserMap {
			continue
		}
		u := s.NS[pstree.UserNS]
		um, gm, err := userMapText(p, u)
		if err != nil {
			return err
		}
		sg := "allow"
		if !p.Tree.Namespace(u).SetgroupsAllowed {
			sg = "deny"
		}
		f := &mapFiles{}
		for j, kv := range [3][2]string{{"setgroups", sg}, {"uid_map", um}, {"gid_map", gm}} {
			if kv[1] == "" {
				continue // a map the image does not have
			}
			f.path[j] = l.strs.cstr(fmt.Sprintf("/proc/%d/%s", p.Procs[s.Target].PIDs[0], kv[0]))
			f.text[j], f.n[j] = l.strs.cstr(kv[1]), len(kv[1])
		}
		l.maps[i] = f
	}
	return nil
}

// mapBlock computes the block's layout (header, proc records, step records,
// string area, one stack per proc and per thread), maps it, copies the
// string area in with its vectors relocated, and fills the header.
func (l *layout) mapBlock() (*block, error) {
	p := l.p
	b := &block{nprocs: len(p.Procs), nsteps: len(p.Steps)}
	nthreads := 0
	for _, s := range p.Steps {
		if s.Op == OpThread {
			nthreads++
		}
	}
	b.nstacks = b.nprocs + nthreads
	b.procsOff = headerSize
	b.stepsOff = b.procsOff + uintptr(b.nprocs)*procRecSize
	b.strOff = (b.stepsOff + uintptr(b.nsteps)*stepRecSize + 63) &^ 63
	b.strN = uintptr(len(l.strs.buf))
	b.stacksOff = (b.strOff + b.strN + 4095) &^ 4095
	size := int(b.stacksOff) + b.nstacks*stackSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map the builder block (%d bytes): %w", size, err)
	}
	b.mem = mem
	b.base = unsafe.Pointer(&mem[0])
	copy(mem[b.strOff:], l.strs.buf)
	for _, o := range l.strs.ptrs {
		a := (*uint64)(unsafe.Pointer(&mem[b.strOff+uintptr(o)]))
		*a += uint64(uintptr(b.base) + b.strOff)
	}
	h := hdrAt(b.base)
	h.nsteps = int64(b.nsteps)
	h.base = uint64(uintptr(b.base))
	copy(h.lastPIDPath[:], procfs.LastPIDPath+"\x00")
	return b, nil
}

// strAddr is the address of string-area offset o in the mapped block.
func (b *block) strAddr(o int) uint64 { return uint64(uintptr(b.base) + b.strOff + uintptr(o)) }

// writeProcs fills one record per proc: its fds, flags, payload strings,
// credentials and name. Each proc's chain of steps is linked in writeSteps.
func (l *layout) writeProcs(b *block, links map[int]*agentLink, mark int) {
	p := l.p
	for i := range p.Procs {
		r := procAt(b.base, b.procsOff, int64(i))
		r.firstStep, r.pidfd, r.alive, r.controlFD, r.markFD = -1, -1, 1, -1, -1
		if link := links[i]; link != nil {
			r.controlFD = int32(link.child.Fd())
		}
		if p.becomesWaiter(i) {
			r.markFD = int32(mark)
		}
		pr := &p.Procs[i]
		r.selfPid = int64(pr.PIDs[len(pr.PIDs)-1])
		if p.Options.Payload == PayloadStopped {
			r.stopSelf = 1
		}
		if p.isSubreaper(i) {
			r.subreaper = 1
		}
		if ps := l.procs[i]; ps.argv != 0 || ps.path != 0 {
			r.path, r.argv, r.envp = b.strAddr(ps.path), b.strAddr(ps.argv), b.strAddr(ps.envp)
			if ps.cwd >= 0 {
				r.cwd = b.strAddr(ps.cwd)
			}
			if ps.root != 0 {
				r.root = b.strAddr(ps.root)
			}
			if ps.nmounts != 0 {
				r.mounts, r.nmounts = b.strAddr(ps.mounts), int64(ps.nmounts)
			}
		}
		l.creds[i].put(r, b.strAddr(l.procs[i].groups))
		putComm(&r.comm, taskComm(p, i))
	}
}

// writeSteps fills one record per step, links each actor's steps into a
// chain (firstStep, nextSame) and hands out the builder stacks.
func (l *layout) writeSteps(b *block) error {
	p := l.p
	last := make([]int64, b.nprocs) // each actor's latest step, -1 none
	for i := range last {
		last[i] = -1
	}
	stack := 0
	nextStack := func() uint64 {
		s := uint64(uintptr(b.base) + b.stacksOff + uintptr(stack*stackSize))
		stack++
		return s
	}
	byThread := threadCloners(p)
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
		var err error
		switch s.Op {
		case OpClone:
			err = l.writeClone(b, i, r, nextStack(), byThread)
		case OpThread:
			err = l.writeThread(i, r, nextStack())
		case OpSetPFC:
			r.into = int64(s.Target) // -1: unshare
		case OpUnshare, OpSetns:
			r.into = int64(s.Target)
			r.arg = int64(s.NS.CloneFlags())
		case OpUserMap:
			r.mapProc = -1
			if p.Procs[s.Target].PIDs[0] == 0 {
				r.mapProc = int64(s.Target) // a keeper: its pid is the kernel's
			}
			f := l.maps[i]
			for j := range f.path {
				if f.n[j] == 0 {
					continue // not written: a null path (addUserMaps)
				}
				r.fpath[j], r.ftext[j] = b.strAddr(f.path[j]), b.strAddr(f.text[j])
				r.flen[j] = int64(f.n[j])
			}
		case OpHostname:
			h, d := hostnameOf(p, s.Actor)
			if len(h) > len(r.host) || len(d) > len(r.domain) {
				err = fmt.Errorf("hostname %q / domain name %q longer than 64 bytes: %w", h, d, ErrBadImage)
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
		if err != nil {
			return fmt.Errorf("step %d: %w", i, err)
		}
	}
	return nil
}

// writeClone fills an OpClone step: clone3 arguments sharing the
// restorer's memory and fd table, the child's pidfd and CLONE_CHILD_CLEARTID
// word in its proc record, its set_tid array, its flags.
func (l *layout) writeClone(b *block, i int, r *stepRec, stack uint64, byThread map[int]int) error {
	p, s := l.p, &l.p.Steps[i]
	n, err := setTIDOf(p, s, p.Procs[s.Target].PIDs, r)
	if err != nil {
		return err
	}
	child := procAt(b.base, b.procsOff, int64(s.Target))
	r.child = int64(s.Target)
	if s.Actor >= 0 && len(p.Procs[s.Actor].PIDs) == 1 && p.Procs[s.Target].PIDs[0] == 0 {
		r.hostPidOut = 1 // clone3 returns its level-0 pid (writeUserMaps)
	}
	if j, ok := byThread[i]; ok {
		r.byThread = int64(j)
	}
	r.args = sys.CloneArgs{
		Flags:      sys.CLONE_VM | sys.CLONE_FILES | sys.CLONE_PIDFD | sys.CLONE_CHILD_CLEARTID,
		PidFD:      uint64(uintptr(unsafe.Pointer(&child.pidfd))),
		ChildTID:   uint64(uintptr(unsafe.Pointer(&child.alive))),
		ExitSignal: uint64(unix.SIGCHLD),
		Stack:      stack,
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
			return fmt.Errorf("pid ns %d has no init to setns through: %w", s.Into, ErrUnsupported)
		}
	}
	return nil
}

// writeThread fills an OpThread step: clone3 arguments of a thread of its
// actor, its set_tid array and its name.
func (l *layout) writeThread(i int, r *stepRec, stack uint64) error {
	s := &l.p.Steps[i]
	n, err := setTIDOf(l.p, s, s.PIDs, r)
	if err != nil {
		return err
	}
	r.child = threadArg | int64(i) // the thread reads its name here
	putComm(&r.comm, threadComm(l.p, s))
	r.args = sys.CloneArgs{
		Flags:     sys.CLONE_VM | sys.CLONE_FS | sys.CLONE_FILES | sys.CLONE_SIGHAND | sys.CLONE_THREAD | sys.CLONE_SYSVSEM,
		Stack:     stack,
		StackSize: stackSize,
	}
	if n > 0 {
		r.args.SetTID, r.args.SetTIDSize = uint64(uintptr(unsafe.Pointer(&r.setTID[0]))), uint64(n)
	}
	return nil
}

// setPrewake: the host cursor is written by the writer helper and used by
// the next step's clone, so the cloner is woken one step early. It is then
// spinning on a CPU when the cursor is set, and the window in which an
// unrelated fork can take the pid is as short as a hand-over between two
// running processes.
func (l *layout) setPrewake(b *block) {
	p := l.p
	for i := 1; i+1 < len(p.Steps); i++ {
		s, n := &p.Steps[i], &p.Steps[i+1]
		if s.Op == OpLastPID && s.Actor == p.HostWriter && s.Arg >= 0 && n.Actor >= 0 && n.Actor != s.Actor {
			stepAt(b.base, b.stepsOff, int64(i-1)).prewake = int64(n.Actor)
		}
	}
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
