//go:build amd64

package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Check reads and validates DIR/state.img and pages.img against tr,
// before anything is created; Restore checks again.
func Check(dir string, tr *pstree.Tree) error {
	_, pages, err := load(dir, tr)
	if pages != nil {
		unix.Munmap(pages)
	}
	return err
}

func load(dir string, tr *pstree.Tree) (*imagepb.StateImage, []byte, error) {
	s, err := imagefile.ReadState(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	pages, err := openPages(dir)
	if err != nil {
		return nil, nil, err
	}
	if err := Validate(tr, s, uint64(len(pages))); err != nil {
		if len(pages) > 0 {
			unix.Munmap(pages)
		}
		return nil, nil, err
	}
	return s, pages, nil
}

// Restore fills in the live tasks of tr, which a stopped-payload restore
// has just created with their pids: each is parked, group-stopped, in
// memory it shares with this process. Each is resumed from its stop
// straight into ptrace, made to exec its program (an address space of
// its own), rebuilt by injected system calls and released at the
// instruction it was dumped at. On error the tasks are left traced by a
// thread that is gone, so PTRACE_O_EXITKILL has killed them; the caller
// kills and reaps the rest of the tree.
func Restore(dir string, tr *pstree.Tree, o Options) error {
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	s, pages, err := load(dir, tr)
	if err != nil {
		return err
	}
	if len(pages) > 0 {
		defer unix.Munmap(pages)
	}
	saved := make(map[int]*imagepb.TaskSaved, len(s.GetTasks()))
	for _, ts := range s.GetTasks() {
		saved[int(ts.GetPid())] = ts
	}
	var tasks []*pstree.Task
	for i := range tr.Tasks {
		if t := &tr.Tasks[i]; stateful(t) {
			tasks = append(tasks, t)
		}
	}
	if len(tasks) == 0 {
		return nil
	}
	code, err := execTrampoline()
	if err != nil {
		return err
	}
	defer unix.Munmap(code)
	// The pipes go above every recorded fd; each task's exec copies them
	// from the fd table it shares with this process until then.
	base := 1024
	for _, ts := range s.GetTasks() {
		for _, of := range ts.GetFiles() {
			base = max(base, int(of.GetFd())+1)
		}
	}
	pipes, err := makePipes(s, base)
	if err != nil {
		return fmt.Errorf("re-create the pipes: %w", err)
	}
	defer pipes.close()
	// SIGCONT ends the stopped payload's group-stop; the notification
	// each parent gets (CLD_CONTINUED, a SIGCHLD pending in a parked
	// parent) is sent by the child on its way back into its futex wait,
	// so all of them are out before any task's signal state is set anew.
	for _, t := range tasks {
		if err := unix.Kill(t.PID(), unix.SIGCONT); err != nil {
			return fmt.Errorf("continue pid %d: %w", t.PID(), err)
		}
	}
	for _, t := range tasks {
		if err := waitLeftStop(o.Proc, t.PID()); err != nil {
			return err
		}
	}
	tc := newTracer()
	defer tc.close() // a failure: the tracees die with this thread (EXITKILL)
	t0 := time.Now()
	calls := 0
	var held []int // threads made again, held at a stop until the end
	tc.do(func() {
		for _, t := range tasks {
			if err = seize(t.PID(), unix.PTRACE_O_EXITKILL|unix.PTRACE_O_TRACEEXEC|unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_TRACECLONE); err != nil {
				return
			}
		}
		for _, t := range tasks {
			f := &filler{proc: o.Proc, t: t, ts: saved[t.PID()], pages: pages, code: code, nullStdio: o.NullStdio, pipes: pipes}
			if err = f.fill(); err != nil {
				err = fmt.Errorf("restore the state of pid %d: %w", t.PID(), err)
				return
			}
			calls += f.in.n
			held = append(held, f.held...)
		}
		for _, t := range tasks {
			if err = verifyMaps(o.Proc, t.PID(), saved[t.PID()]); err != nil {
				return
			}
		}
		for _, t := range tasks {
			// A task stopped by job control stops again before its
			// first instruction: SIGSTOP queued while it is held,
			// taken on its way out of the detach (its parent hears
			// of the stop, as when it was first stopped).
			if t.State == pstree.Stopped {
				if e := unix.Kill(t.PID(), unix.SIGSTOP); e != nil {
					err = fmt.Errorf("stop pid %d again: %w", t.PID(), e)
					return
				}
			}
			if e := ptrace(unix.PTRACE_DETACH, t.PID(), 0, 0); e != nil {
				err = fmt.Errorf("ptrace detach pid %d: %w", t.PID(), e)
				return
			}
		}
		for _, tid := range held {
			if e := ptrace(unix.PTRACE_DETACH, tid, 0, 0); e != nil {
				err = fmt.Errorf("ptrace detach thread %d: %w", tid, e)
				return
			}
		}
	})
	if err == nil && o.Log != nil {
		o.Log("filled in %d tasks in %v (%d injected system calls)", len(tasks), time.Since(t0).Round(time.Millisecond), calls)
	}
	return err
}

// waitLeftStop waits until a continued task no longer shows 'T' (it is
// back in its futex wait, having notified its parent).
func waitLeftStop(proc string, pid int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", proc, pid))
		if err != nil {
			return err
		}
		switch procfs.StatState(b) {
		case 0:
			return fmt.Errorf("%s/%d/stat: no state", proc, pid)
		case 'T':
		default:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still stopped 10s after SIGCONT", pid)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// execTrampoline maps `syscall; int3` in this process: the parked tasks
// share its memory, so they can run it to exec.
func execTrampoline() ([]byte, error) {
	b, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	copy(b, trapCode)
	if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC); err != nil {
		unix.Munmap(b)
		return nil, err
	}
	return b, nil
}

// scratch is what the restore maps in the task for itself: one page of
// code, then room for the arguments of the calls (paths up to PATH_MAX).
const (
	scratchPages = 3
	scratchSize  = scratchPages * pageSize
)

// filler rebuilds one task.
type filler struct {
	proc      string
	t         *pstree.Task
	ts        *imagepb.TaskSaved
	pages     []byte
	code      []byte // execTrampoline
	nullStdio bool
	pipes     *restoredPipes

	in   injector
	mem  *os.File
	data uint64 // the scratch's argument area
	held []int  // its threads made again, each at a syscall-exit stop
}

func (f *filler) fill() error {
	pid := f.t.PID()
	if err := f.exec(); err != nil {
		return err
	}
	mem, err := os.OpenFile(fmt.Sprintf("%s/%d/mem", f.proc, pid), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer mem.Close()
	f.mem = mem
	cur, err := readMaps(f.proc, pid, false)
	if err != nil {
		return err
	}
	if err := f.scratch(cur); err != nil {
		return err
	}
	for _, m := range cur {
		if m.special() || m.path == "[vsyscall]" {
			continue
		}
		if _, err := f.in.call(unix.SYS_MUNMAP, m.start, m.end-m.start); err != nil {
			return fmt.Errorf("unmap %v: %w", m, err)
		}
	}
	if err := f.specials(cur); err != nil {
		return err
	}
	if err := f.mappings(); err != nil {
		return err
	}
	if err := f.mmLayout(); err != nil {
		return err
	}
	if err := f.signals(); err != nil {
		return err
	}
	if err := f.files(); err != nil {
		return err
	}
	if err := f.misc(); err != nil {
		return err
	}
	if err := f.threads(); err != nil {
		return err
	}
	if err := setFP(pid, leaderOf(f.ts)); err != nil {
		return err
	}
	// The last call unmaps the code it runs; the task is then held at the
	// syscall-exit stop, where its own registers go back.
	if err := f.in.syscallExit(unix.SYS_MUNMAP, f.in.code, scratchSize); err != nil {
		return fmt.Errorf("unmap the injected code: %w", err)
	}
	// The recorded mask goes in by ptrace, with no system call after it:
	// a signal it unblocks is delivered on the way back to the task's own
	// registers, as it would have been.
	blocked := f.ts.GetSigBlocked()
	if err := ptrace(ptraceSetSigmask, pid, 8, uintptr(unsafe.Pointer(&blocked))); err != nil {
		return fmt.Errorf("ptrace setsigmask: %w", err)
	}
	r := regsOf(f.ts.GetRegs())
	if f.ts.GetSigPending()&^blocked == 0 {
		// Nothing to deliver: the kernel will not pass through its
		// signal code, where it restarts an interrupted system call.
		r = resumed(r)
	}
	return setRegs(pid, &r)
}

// exec has the parked task run execve of its own program from the
// trampoline in this process's memory: the only way for a task created
// with CLONE_VM to get an address space of its own while keeping its pid.
// PTRACE_O_TRACEEXEC stops it before the new program's first instruction.
func (f *filler) exec() error {
	pid := f.t.PID()
	r, err := getRegs(pid)
	if err != nil {
		return err
	}
	path := append([]byte(f.t.Exe), 0)
	argv := []uintptr{uintptr(unsafe.Pointer(&path[0])), 0}
	envp := []uintptr{0}
	r.Rip = uint64(uintptr(unsafe.Pointer(&f.code[0])))
	r.Rax = unix.SYS_EXECVE
	r.Orig_rax = ^uint64(0)
	r.Rdi, r.Rsi, r.Rdx = uint64(argv[0]), uint64(uintptr(unsafe.Pointer(&argv[0]))), uint64(uintptr(unsafe.Pointer(&envp[0])))
	if err := setRegs(pid, &r); err != nil {
		return err
	}
	defer func() { _, _, _ = path[0], argv[0], envp[0] }() // alive until the exec is done
	for {
		if err := ptrace(unix.PTRACE_CONT, pid, 0, 0); err != nil {
			return fmt.Errorf("ptrace cont pid %d: %w", pid, err)
		}
		ws, err := waitStop(pid)
		if err != nil {
			return err
		}
		if ws.StopSignal() == unix.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_EXEC {
			break
		}
		if ws.StopSignal() == unix.SIGTRAP && ws.TrapCause() == 0 { // the int3: execve failed
			out, _ := getRegs(pid)
			return fmt.Errorf("exec %s: %v", f.t.Exe, errnoOf(out.Rax))
		}
	}
	// The exec event stops inside execve, whose return value still goes
	// to rax on the way out: run to the syscall-exit stop first, where
	// the registers set are the ones the task runs on.
	for {
		if err := ptrace(unix.PTRACE_SYSCALL, pid, 0, 0); err != nil {
			return fmt.Errorf("ptrace syscall pid %d: %w", pid, err)
		}
		ws, err := waitStop(pid)
		if err != nil {
			return err
		}
		if ws.StopSignal() == unix.SIGTRAP|0x80 {
			break
		}
	}
	base, err := getRegs(pid)
	if err != nil {
		return err
	}
	f.in = injector{pid: pid, code: base.Rip, base: base}
	return nil
}

// scratch maps the injected code and its argument area at an address
// free in both the current and the recorded layout, running its mmap from
// `syscall; int3` poked over the new program's first instruction.
func (f *filler) scratch(cur []mapping) error {
	var busy []span
	for _, m := range cur {
		busy = append(busy, span{m.start, m.end})
	}
	for _, v := range f.ts.GetVmas() {
		busy = append(busy, span{v.GetStart(), v.GetEnd()})
	}
	at, ok := freeRange(scratchSize, busy)
	if !ok {
		return fmt.Errorf("no room for the injected code")
	}
	if err := pokeWord(f.in.pid, f.in.code, []byte(trapCode)); err != nil {
		return err
	}
	got, err := f.in.call(unix.SYS_MMAP, at, scratchSize, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0)
	if err != nil || got != at {
		return fmt.Errorf("map the injected code at %#x: got %#x, %v", at, got, err)
	}
	if _, err := f.mem.WriteAt([]byte(trapCode), int64(at)); err != nil {
		return fmt.Errorf("write the injected code: %w", err)
	}
	f.in.code, f.data = at, at+pageSize
	// The calls use no stack; rsp in the scratch keeps sigaltstack from
	// finding the task "on" a recorded alternate stack.
	f.in.base.Rsp = at + scratchSize
	return nil
}

// put writes b into the argument area at off and returns its address.
func (f *filler) put(off uint64, b []byte) (uint64, error) {
	if off+uint64(len(b)) > scratchSize-pageSize {
		return 0, fmt.Errorf("argument of %d bytes does not fit", len(b))
	}
	if _, err := f.mem.WriteAt(b, int64(f.data+off)); err != nil {
		return 0, err
	}
	return f.data + off, nil
}

type span struct{ start, end uint64 }

// atFDCWD is AT_FDCWD (-100) as a register holds it.
const atFDCWD = ^uint64(99)

// freeRange finds size bytes above mmap_min_addr's usual 64 KiB that
// overlap none of busy.
func freeRange(size uint64, busy []span) (uint64, bool) {
	slices.SortFunc(busy, func(a, b span) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	at := uint64(0x10000)
	for _, b := range busy {
		if at+size <= b.start {
			return at, true
		}
		at = max(at, b.end)
	}
	return at, at+size <= taskSize
}

// specials moves the kernel's vdso and vvar pages to the recorded
// addresses (mremap: the kernel follows its vdso, which signal return
// and the C library use). Another kernel's vdso is refused: the program
// may hold pointers into the recorded one.
func (f *filler) specials(cur []mapping) error {
	kinds := map[string]imagepb.VMAKind{"[vdso]": imagepb.VMAKind_VMA_VDSO, "[vvar]": imagepb.VMAKind_VMA_VVAR, "[vvar_vclock]": imagepb.VMAKind_VMA_VVAR_VCLOCK}
	want := map[imagepb.VMAKind]*imagepb.VMA{}
	for _, v := range f.ts.GetVmas() {
		if v.GetKind() >= imagepb.VMAKind_VMA_VDSO {
			want[v.GetKind()] = v
		}
	}
	type move struct {
		m   mapping
		dst uint64
	}
	var moves []move
	busy := []span{{f.in.code, f.in.code + scratchSize}}
	for _, v := range f.ts.GetVmas() {
		busy = append(busy, span{v.GetStart(), v.GetEnd()})
	}
	for _, m := range cur {
		if !m.special() {
			continue
		}
		busy = append(busy, span{m.start, m.end})
		v := want[kinds[m.path]]
		if v == nil || v.GetEnd()-v.GetStart() != m.end-m.start {
			return fmt.Errorf("%w: this kernel's %s (%d bytes) is not the dumped one: restore on the kernel that dumped", ErrUnsupported, m.path, m.end-m.start)
		}
		delete(want, kinds[m.path])
		if m.path == "[vdso]" {
			b := make([]byte, m.end-m.start)
			if _, err := f.mem.ReadAt(b, int64(m.start)); err != nil {
				return fmt.Errorf("read vdso: %w", err)
			}
			if sum := sha256.Sum256(b); !bytes.Equal(sum[:], f.ts.GetVdsoSha256()) {
				return fmt.Errorf("%w: this kernel's vdso is not the dumped one: restore on the kernel that dumped", ErrUnsupported)
			}
		}
		moves = append(moves, move{m, v.GetStart()})
	}
	for k := range want {
		return fmt.Errorf("%w: this kernel has no %v, which the dump has", ErrUnsupported, k)
	}
	// Through free addresses first, so that no move lands on a special
	// mapping that has yet to move.
	for i := range moves {
		mv := &moves[i]
		if mv.m.start == mv.dst {
			continue
		}
		size := mv.m.end - mv.m.start
		tmp, ok := freeRange(size, busy)
		if !ok {
			return fmt.Errorf("no room to move %s", mv.m.path)
		}
		busy = append(busy, span{tmp, tmp + size})
		if _, err := f.in.call(unix.SYS_MREMAP, mv.m.start, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, tmp); err != nil {
			return fmt.Errorf("move %s: %w", mv.m.path, err)
		}
		mv.m.end, mv.m.start = tmp+size, tmp
	}
	for _, mv := range moves {
		if mv.m.start == mv.dst {
			continue
		}
		size := mv.m.end - mv.m.start
		if _, err := f.in.call(unix.SYS_MREMAP, mv.m.start, size, size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, mv.dst); err != nil {
			return fmt.Errorf("move %s to %#x: %w", mv.m.path, mv.dst, err)
		}
	}
	return nil
}

// mappings maps every recorded mapping at its address and writes its
// stored pages (process_vm_writev from pages.img, mapped here), with
// write permission added for the time of the writing.
func (f *filler) mappings() error {
	fd, open := -1, ""
	closeFD := func() {
		if fd >= 0 {
			f.in.call(unix.SYS_CLOSE, uint64(fd))
			fd, open = -1, ""
		}
	}
	defer closeFD()
	for _, v := range f.ts.GetVmas() {
		if v.GetKind() >= imagepb.VMAKind_VMA_VDSO {
			continue
		}
		prot := uint64(v.GetProt())
		if len(v.GetPages()) > 0 {
			prot |= unix.PROT_WRITE
		}
		size := v.GetEnd() - v.GetStart()
		flags := uint64(unix.MAP_PRIVATE | unix.MAP_FIXED)
		if v.GetShared() {
			// read-only, from a file opened read-only (Validate): the
			// task can no more write it than before
			flags = unix.MAP_SHARED | unix.MAP_FIXED
		}
		var err error
		if v.GetKind() == imagepb.VMAKind_VMA_FILE {
			if p := string(v.GetPath()); p != open {
				closeFD()
				a, err := f.put(0, append(slices.Clone(v.GetPath()), 0))
				if err != nil {
					return err
				}
				n, err := f.in.call(unix.SYS_OPENAT, atFDCWD, a, unix.O_RDONLY|unix.O_CLOEXEC)
				if err != nil {
					return fmt.Errorf("open %s: %w", p, err)
				}
				fd, open = int(n), p
			}
			_, err = f.in.call(unix.SYS_MMAP, v.GetStart(), size, prot, flags, uint64(fd), v.GetOffset())
		} else {
			if v.GetGrowsDown() {
				flags |= unix.MAP_GROWSDOWN
			}
			_, err = f.in.call(unix.SYS_MMAP, v.GetStart(), size, prot, flags|unix.MAP_ANONYMOUS, ^uint64(0), 0)
		}
		if err != nil {
			return fmt.Errorf("map %#x-%#x %s: %w", v.GetStart(), v.GetEnd(), v.GetPath(), err)
		}
		if len(v.GetPages()) == 0 {
			continue
		}
		if err := f.writePages(v); err != nil {
			return err
		}
		if prot != uint64(v.GetProt()) {
			if _, err := f.in.call(unix.SYS_MPROTECT, v.GetStart(), size, uint64(v.GetProt())); err != nil {
				return fmt.Errorf("mprotect %#x: %w", v.GetStart(), err)
			}
		}
	}
	return nil
}

// writePages copies a mapping's stored runs into the task, up to IOV_MAX
// runs a call.
func (f *filler) writePages(v *imagepb.VMA) error {
	runs := v.GetPages()
	for len(runs) > 0 {
		n := min(len(runs), 1024)
		local := make([]unix.Iovec, n)
		remote := make([]unix.RemoteIovec, n)
		total := 0
		for i, r := range runs[:n] {
			l := int(r.GetNpages() * pageSize)
			local[i] = unix.Iovec{Base: &f.pages[r.GetOffset()]}
			local[i].SetLen(l)
			remote[i] = unix.RemoteIovec{Base: uintptr(r.GetAddr()), Len: l}
			total += l
		}
		got, err := unix.ProcessVMWritev(f.in.pid, local, remote, 0)
		if err == nil && got != total {
			err = fmt.Errorf("wrote %d of %d bytes", got, total)
		}
		if err != nil {
			return fmt.Errorf("write the pages of %#x-%#x: %w", v.GetStart(), v.GetEnd(), err)
		}
		runs = runs[n:]
	}
	return nil
}

// mmLayout sets code, data, brk, stack, argument and environment bounds
// and the auxiliary vector with prctl(PR_SET_MM, PR_SET_MM_MAP): what
// /proc/PID/cmdline, environ, stat and brk(2) go by. exe_fd -1 keeps
// /proc/PID/exe, already right from the exec.
func (f *filler) mmLayout() error {
	mm := f.ts.GetMm()
	auxv := mm.GetAuxv()
	aa, err := f.put(256, auxv)
	if err != nil {
		return err
	}
	b := make([]byte, 0, 104)
	for _, x := range []uint64{mm.GetStartCode(), mm.GetEndCode(), mm.GetStartData(), mm.GetEndData(), mm.GetStartBrk(), mm.GetBrk(),
		mm.GetStartStack(), mm.GetArgStart(), mm.GetArgEnd(), mm.GetEnvStart(), mm.GetEnvEnd(), aa} {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(auxv)))
	b = binary.LittleEndian.AppendUint32(b, ^uint32(0)) // exe_fd
	a, err := f.put(0, b)
	if err != nil {
		return err
	}
	if _, err := f.in.call(unix.SYS_PRCTL, unix.PR_SET_MM, unix.PR_SET_MM_MAP, a, uint64(len(b))); err != nil {
		return fmt.Errorf("prctl(PR_SET_MM_MAP): %w", err)
	}
	return nil
}

// signals sets the recorded dispositions (handlers, SIG_IGN, SIG_DFL)
// and the blocked mask. What is pending now was queued by
// the restore itself (the SIGCONT, the SIGCHLDs of the children's stops):
// setting SIG_IGN discards a pending signal, blocked or not, so those get
// SIG_IGN first. Only the signals whose disposition must change, or that
// are pending, cost a call.
func (f *filler) signals() error {
	cur, err := readStatus(f.proc, f.in.pid)
	if err != nil {
		return err
	}
	if cur.SigCgt != 0 {
		return fmt.Errorf("handlers after the exec (SigCgt %016x)", cur.SigCgt)
	}
	// struct sigaction: handler, flags, restorer, mask.
	act := func(off, h uint64) (uint64, error) {
		return f.put(off, binary.LittleEndian.AppendUint64(make([]byte, 0, 32), h)[:32])
	}
	ign, err := act(0, 1) // SIG_IGN
	if err != nil {
		return err
	}
	dfl, err := act(32, 0) // SIG_DFL
	if err != nil {
		return err
	}
	handlers := map[uint64]*imagepb.SigHandler{}
	for _, h := range f.ts.GetHandlers() {
		handlers[uint64(h.GetSig())] = h
	}
	want := f.ts.GetSigIgnored()
	for sig := uint64(1); sig <= 64; sig++ {
		bit := uint64(1) << (sig - 1)
		if sig == uint64(unix.SIGKILL) || sig == uint64(unix.SIGSTOP) {
			continue
		}
		ignored := cur.SigIgn&bit != 0
		if pending(cur)&bit != 0 && !ignored {
			if _, err := f.in.call(unix.SYS_RT_SIGACTION, sig, ign, 0, 8); err != nil {
				return fmt.Errorf("rt_sigaction(%d, SIG_IGN): %w", sig, err)
			}
			ignored = true
		}
		if h := handlers[sig]; h != nil {
			var b []byte
			for _, x := range []uint64{h.GetHandler(), h.GetFlags(), h.GetRestorer(), h.GetMask()} {
				b = binary.LittleEndian.AppendUint64(b, x)
			}
			a, err := f.put(96, b)
			if err != nil {
				return err
			}
			if _, err := f.in.call(unix.SYS_RT_SIGACTION, sig, a, 0, 8); err != nil {
				return fmt.Errorf("rt_sigaction(%d, handler %#x): %w", sig, h.GetHandler(), err)
			}
		} else if ignored && want&bit == 0 {
			if _, err := f.in.call(unix.SYS_RT_SIGACTION, sig, dfl, 0, 8); err != nil {
				return fmt.Errorf("rt_sigaction(%d, SIG_DFL): %w", sig, err)
			}
		} else if !ignored && want&bit != 0 {
			if _, err := f.in.call(unix.SYS_RT_SIGACTION, sig, ign, 0, 8); err != nil {
				return fmt.Errorf("rt_sigaction(%d, SIG_IGN): %w", sig, err)
			}
		}
	}
	// Everything stays blocked (as the builder left it) until the end:
	// a signal queued again below must wait for the task's own
	// registers, not be delivered into an injected call.
	m, err := f.put(64, binary.LittleEndian.AppendUint64(nil, ^uint64(0)))
	if err != nil {
		return err
	}
	if _, err := f.in.call(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, m, 0, 8); err != nil {
		return fmt.Errorf("rt_sigprocmask: %w", err)
	}
	after, err := readStatus(f.proc, f.in.pid)
	if err != nil {
		return err
	}
	if pending(after) != 0 || after.SigIgn != want || after.SigCgt != f.ts.GetSigCaught() {
		return fmt.Errorf("signal state after the reset: pending %016x, ignored %016x, caught %016x; want none pending, %016x, %016x",
			pending(after), after.SigIgn, after.SigCgt, want, f.ts.GetSigCaught())
	}
	return f.queueSignals()
}

// queueSignals queues the recorded pending signals again, with their
// siginfo, the task sending them to itself: only to itself may a task
// queue a siginfo the kernel would make (si_code >= 0: a SIGCHLD's
// CLD_EXITED, a kill's SI_USER).
func (f *filler) queueSignals() error {
	self := uint64(f.t.InnerPID())
	for _, q := range []struct {
		infos  [][]byte
		shared bool
	}{{f.ts.GetPendingPrivate(), false}, {f.ts.GetPendingShared(), true}} {
		for _, si := range q.infos {
			a, err := f.put(0, si)
			if err != nil {
				return err
			}
			sig := uint64(binary.LittleEndian.Uint32(si))
			if q.shared {
				_, err = f.in.call(unix.SYS_RT_SIGQUEUEINFO, self, sig, a)
			} else {
				_, err = f.in.call(unix.SYS_RT_TGSIGQUEUEINFO, self, self, sig, a)
			}
			if err != nil {
				return fmt.Errorf("queue signal %d again: %w", sig, err)
			}
		}
	}
	after, err := readStatus(f.proc, f.in.pid)
	if err != nil {
		return err
	}
	if pending(after) != f.ts.GetSigPending() {
		return fmt.Errorf("pending signals %016x after queueing, the dump had %016x", pending(after), f.ts.GetSigPending())
	}
	return nil
}

// files closes what the exec kept of the restorer's descriptors and
// opens the recorded ones again at their numbers, flags and offsets.
func (f *filler) files() error {
	// Everything but the pipes (makePipes), which go last.
	base := uint64(f.pipes.base)
	if _, err := f.in.call(unix.SYS_CLOSE_RANGE, 3, base-1, 0); err != nil {
		return fmt.Errorf("close_range: %w", err)
	}
	defer f.in.call(unix.SYS_CLOSE_RANGE, base, uint64(^uint32(0)), 0)
	rec := map[int32]*imagepb.OpenFile{}
	for _, of := range f.ts.GetFiles() {
		rec[of.GetFd()] = of
	}
	for fd := int32(0); fd <= 2; fd++ {
		if rec[fd] == nil {
			if _, err := f.in.call(unix.SYS_CLOSE, uint64(fd)); err != nil && err != unix.EBADF {
				return err
			}
		}
	}
	files := slices.Clone(f.ts.GetFiles())
	slices.SortFunc(files, func(a, b *imagepb.OpenFile) int { return int(a.GetFd() - b.GetFd()) })
	for _, of := range files {
		path, flags := of.GetPath(), uint64(of.GetFlags())&^uint64(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC|unix.O_NOCTTY)
		if of.GetPipe() != 0 {
			if _, err := f.in.call(unix.SYS_DUP3, uint64(f.pipes.fds[keyOf(of)]), uint64(of.GetFd()), flags&unix.O_CLOEXEC); err != nil {
				return fmt.Errorf("dup3 a pipe to fd %d: %w", of.GetFd(), err)
			}
			continue
		}
		if len(path) == 0 { // the restorer's own stdio
			if !f.nullStdio {
				continue
			}
			path, flags = []byte("/dev/null"), unix.O_RDWR
		}
		a, err := f.put(0, append(slices.Clone(path), 0))
		if err != nil {
			return err
		}
		got, err := f.in.call(unix.SYS_OPENAT, atFDCWD, a, flags)
		if err != nil {
			return fmt.Errorf("open %s for fd %d: %w", path, of.GetFd(), err)
		}
		if int32(got) != of.GetFd() {
			if _, err := f.in.call(unix.SYS_DUP3, got, uint64(of.GetFd()), flags&unix.O_CLOEXEC); err != nil {
				return fmt.Errorf("dup3 to fd %d: %w", of.GetFd(), err)
			}
			f.in.call(unix.SYS_CLOSE, got)
		}
		if of.GetPos() != 0 && len(of.GetPath()) > 0 {
			if _, err := f.in.call(unix.SYS_LSEEK, uint64(of.GetFd()), uint64(of.GetPos()), unix.SEEK_SET); err != nil {
				return fmt.Errorf("seek fd %d to %d: %w", of.GetFd(), of.GetPos(), err)
			}
		}
	}
	return nil
}

// misc: working directory, umask, personality, resource limits, the
// leader's own state (ownState: the exec set the name from the path and
// dropped the rest) and, where recorded, the parent-death signal.
func (f *filler) misc() error {
	if cwd := f.t.Cwd; cwd != "" {
		a, err := f.put(0, append([]byte(cwd), 0))
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_CHDIR, a); err != nil {
			return fmt.Errorf("chdir %s: %w", cwd, err)
		}
	}
	if _, err := f.in.call(unix.SYS_UMASK, uint64(f.ts.GetUmask())); err != nil {
		return err
	}
	if _, err := f.in.call(unix.SYS_PERSONALITY, uint64(f.ts.GetPersonality())); err != nil {
		return fmt.Errorf("personality: %w", err)
	}
	if err := f.limits(); err != nil {
		return err
	}
	if err := f.ownState(leaderOf(f.ts), f.t.Comm); err != nil {
		return err
	}
	if f.ts.GetSignalsRecorded() {
		if _, err := f.in.call(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uint64(f.ts.GetPdeathSignal())); err != nil {
			return fmt.Errorf("prctl(PR_SET_PDEATHSIG): %w", err)
		}
	}
	return nil
}

// leaderOf is the part of a task's record that is its leader thread's.
func leaderOf(ts *imagepb.TaskSaved) *imagepb.ThreadSaved {
	return &imagepb.ThreadSaved{
		Tid: ts.GetPid(), Regs: ts.GetRegs(), Xstate: ts.GetXstate(), Fpregs: ts.GetFpregs(),
		SigBlocked: ts.GetSigBlocked(), Pending: ts.GetPendingPrivate(),
		RseqAddr: ts.GetRseqAddr(), RseqLen: ts.GetRseqLen(), RseqSig: ts.GetRseqSig(),
		RobustList: ts.GetRobustList(), RobustListLen: ts.GetRobustListLen(),
		AltstackSp: ts.GetAltstackSp(), AltstackSize: ts.GetAltstackSize(), AltstackFlags: ts.GetAltstackFlags(),
		ClearChildTid: ts.GetClearChildTid(),
	}
}

// ownState sets, with calls injected in the thread f drives, what is the
// thread's own: its name, rseq, robust futex list and, where the
// iterator read them, alternate stack and clear_child_tid (the exec
// dropped all of them).
func (f *filler) ownState(th *imagepb.ThreadSaved, comm string) error {
	if comm != "" {
		a, err := f.put(0, append([]byte(comm), 0))
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_PRCTL, unix.PR_SET_NAME, a); err != nil {
			return fmt.Errorf("prctl(PR_SET_NAME): %w", err)
		}
	}
	if n := th.GetRseqLen(); n != 0 {
		if _, err := f.in.call(unix.SYS_RSEQ, th.GetRseqAddr(), uint64(n), 0, uint64(th.GetRseqSig())); err != nil {
			return fmt.Errorf("rseq at %#x: %w", th.GetRseqAddr(), err)
		}
	}
	if h := th.GetRobustList(); h != 0 {
		if _, err := f.in.call(unix.SYS_SET_ROBUST_LIST, h, th.GetRobustListLen()); err != nil {
			return fmt.Errorf("set_robust_list: %w", err)
		}
	}
	if !f.ts.GetSignalsRecorded() {
		return nil
	}
	if n := th.GetAltstackSize(); n != 0 {
		// stack_t: ss_sp, ss_flags (int, padded), ss_size
		b := binary.LittleEndian.AppendUint64(nil, th.GetAltstackSp())
		b = binary.LittleEndian.AppendUint64(b, uint64(th.GetAltstackFlags()))
		b = binary.LittleEndian.AppendUint64(b, n)
		a, err := f.put(0, b)
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_SIGALTSTACK, a, 0); err != nil {
			return fmt.Errorf("sigaltstack: %w", err)
		}
	}
	if _, err := f.in.call(unix.SYS_SET_TID_ADDRESS, th.GetClearChildTid()); err != nil {
		return fmt.Errorf("set_tid_address: %w", err)
	}
	return nil
}

// setFP puts a thread's xstate (or, without XSAVE, its FXSAVE area) back.
func setFP(tid int, th *imagepb.ThreadSaved) error {
	if xs := th.GetXstate(); len(xs) > 0 {
		return setRegSet(tid, ntX86XState, slices.Clone(xs))
	}
	if fp := th.GetFpregs(); len(fp) > 0 {
		return setRegSet(tid, ntPRFPReg, slices.Clone(fp))
	}
	return nil
}

// limits sets the resource limits that differ from those the task got
// from the restorer. Raising a hard limit needs CAP_SYS_RESOURCE in the
// task: without it the restore fails, naming the limit.
func (f *filler) limits() error {
	cur, err := readLimits(f.proc, f.in.pid)
	if err != nil {
		return err
	}
	for r, l := range f.ts.GetRlimits() {
		if r < len(cur) && cur[r].GetSoft() == l.GetSoft() && cur[r].GetHard() == l.GetHard() {
			continue
		}
		b := binary.LittleEndian.AppendUint64(nil, l.GetSoft())
		b = binary.LittleEndian.AppendUint64(b, l.GetHard())
		a, err := f.put(0, b)
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_PRLIMIT64, 0, uint64(r), a, 0); err != nil {
			return fmt.Errorf("resource limit %d to %d/%d: %w", r, l.GetSoft(), l.GetHard(), err)
		}
	}
	return nil
}

// threads makes the task's other threads again (the exec ended the
// stopped payload's, which frees their tids): clone3 with CLONE_THREAD
// and set_tid, injected in the leader; PTRACE_O_TRACECLONE has each start
// traced. Each then gets what is its own with calls injected in it, in
// the same scratch pages, and is held at a syscall-exit stop with its
// own mask and registers until the end.
func (f *filler) threads() error {
	for i, th := range f.ts.GetThreads() {
		pt := f.t.Threads[i]
		tids := make([]int32, len(pt.TIDs))
		n, err := sys.SetTID(tids, pt.TIDs)
		if err != nil {
			return err
		}
		sa, err := f.put(512, unsafe.Slice((*byte)(unsafe.Pointer(&tids[0])), 4*n))
		if err != nil {
			return err
		}
		args := sys.CloneArgs{Flags: unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM,
			SetTID: sa, SetTIDSize: uint64(n)}
		aa, err := f.put(0, unsafe.Slice((*byte)(unsafe.Pointer(&args)), sys.CloneArgsSize))
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_CLONE3, aa, uint64(sys.CloneArgsSize)); errors.Is(err, unix.EPERM) {
			// set_tid needs CAP_CHECKPOINT_RESTORE in the task itself,
			// which a non-root task has not after its exec.
			return fmt.Errorf("%w: make thread %v again: set_tid refused to the task (a non-root task's threads are not restored yet)", ErrUnsupported, pt.TIDs)
		} else if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("make thread %v again: one of its pids is in use: %w", pt.TIDs, ErrPIDTaken)
		} else if err != nil {
			return fmt.Errorf("make thread %v again: %w", pt.TIDs, err)
		}
		tid := pt.TIDs[0]
		if _, err := waitStop(tid); err != nil {
			return err
		}
		f.held = append(f.held, tid)
		tf := &filler{proc: f.proc, t: f.t, ts: f.ts, mem: f.mem, data: f.data, in: injector{pid: tid, code: f.in.code, base: f.in.base}}
		err = tf.fillThread(th, pt.Comm, pt.TIDs[len(pt.TIDs)-1])
		f.in.n += tf.in.n
		if err != nil {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}

// fillThread gives a thread made again what is its own and leaves it at
// a syscall-exit stop with its registers.
func (f *filler) fillThread(th *imagepb.ThreadSaved, comm string, innerTID int) error {
	if err := f.ownState(th, comm); err != nil {
		return err
	}
	self := uint64(f.t.InnerPID())
	for _, si := range th.GetPending() {
		a, err := f.put(0, si)
		if err != nil {
			return err
		}
		if _, err := f.in.call(unix.SYS_RT_TGSIGQUEUEINFO, self, uint64(innerTID), uint64(binary.LittleEndian.Uint32(si)), a); err != nil {
			return fmt.Errorf("queue a signal again: %w", err)
		}
	}
	if err := setFP(f.in.pid, th); err != nil {
		return err
	}
	if err := f.in.syscallExit(unix.SYS_GETPID); err != nil {
		return err
	}
	blocked := th.GetSigBlocked()
	if err := ptrace(ptraceSetSigmask, f.in.pid, 8, uintptr(unsafe.Pointer(&blocked))); err != nil {
		return fmt.Errorf("ptrace setsigmask: %w", err)
	}
	r := regsOf(th.GetRegs())
	if (th.GetSigPending()|f.ts.GetSigPending())&^blocked == 0 {
		r = resumed(r)
	}
	return setRegs(f.in.pid, &r)
}

// verifyMaps compares the task's layout with the recorded one: the same
// ranges with the same protection, and the same files (device, inode,
// offset) where files are mapped - what a changed or replaced file would
// break. Adjacent ranges alike on both sides are merged first: the kernel
// may join what the dumped task had apart for reasons not restored.
func verifyMaps(proc string, pid int, ts *imagepb.TaskSaved) error {
	cur, err := readMaps(proc, pid, false)
	if err != nil {
		return err
	}
	var got, want []mapping
	for _, m := range cur {
		if m.path != "[vsyscall]" {
			got = append(got, m)
		}
	}
	for _, v := range ts.GetVmas() {
		m := mapping{start: v.GetStart(), end: v.GetEnd(), prot: v.GetProt(), shared: v.GetShared(), offset: v.GetOffset(), dev: v.GetDev(), inode: v.GetInode(), path: string(v.GetPath())}
		if v.GetKind() != imagepb.VMAKind_VMA_FILE {
			m.offset = 0
		}
		want = append(want, m)
	}
	got, want = merged(got), merged(want)
	if len(got) != len(want) {
		return fmt.Errorf("pid %d has %d mappings after the restore, the dump %d", pid, len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.start != w.start || g.end != w.end || g.prot != w.prot || g.shared != w.shared || g.inode != w.inode || (w.inode != 0 && (g.dev != w.dev || g.offset != w.offset)) {
			return fmt.Errorf("pid %d: mapping %v (prot %d, inode %d) after the restore, %v (prot %d, inode %d) in the dump", pid, g, g.prot, g.inode, w, w.prot, w.inode)
		}
	}
	return nil
}

func merged(ms []mapping) []mapping {
	var out []mapping
	for _, m := range ms {
		if m.inode == 0 {
			m.offset, m.dev, m.path = 0, 0, ""
		}
		if k := len(out); k > 0 {
			l := &out[k-1]
			if l.end == m.start && l.prot == m.prot && l.shared == m.shared && l.inode == m.inode && l.dev == m.dev && (m.inode == 0 || l.offset+(l.end-l.start) == m.offset) {
				l.end = m.end
				continue
			}
		}
		out = append(out, m)
	}
	return out
}
