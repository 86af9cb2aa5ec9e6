//go:build amd64

package state

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"github.com/nsinit/nsinit/bpf"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // file page or shared anonymous
)

// readChunk is how much memory one process_vm_readv brings over.
const readChunk = 4 << 20

// errMovedState: the task changed between the tree's read and its state's
// (it cannot while frozen: a bug or a thaw).
var errMovedState = errors.New("the task changed while frozen")

// Record reads the state of every live task of tr, which must be frozen
// (cgroup) or stopped under ptrace, and writes DIR/pages.img and
// DIR/state.img. onTracer runs a function on the thread that already
// traces the tree (the ptrace freeze); nil means the tree is not traced:
// each task is then seized for its registers and let go again, which
// leaves a cgroup-frozen task frozen. signals nil (no eBPF): a task with
// signal handlers is refused.
func Record(dir, proc string, tr *pstree.Tree, onTracer func(func()), signals Signals) (err error) {
	// 0600: memory holds secrets.
	pf, err := os.OpenFile(filepath.Join(dir, PagesFileName), os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		pf.Close()
		if err != nil {
			os.Remove(pf.Name())
		}
	}()
	w := &pageWriter{f: pf, buf: make([]byte, readChunk)}
	pipes := pipeSet{}
	img := &imagepb.StateImage{}
	var kernel map[int]*bpf.TaskSignals
	var kerr error
	if signals != nil {
		var pids []int
		for i := range tr.Tasks {
			if t := &tr.Tasks[i]; stateful(t) {
				pids = append(pids, t.PID())
			}
		}
		kernel, kerr = signals(pids)
	}
	var own *tracer
	if onTracer == nil {
		own = newTracer()
		defer own.close()
		onTracer = own.do
	}
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		if !stateful(t) {
			continue
		}
		ts, terr := recordTask(proc, t, w, pipes, onTracer, own != nil)
		if terr == nil {
			terr = recordSignals(ts, kernel[t.PID()], signals != nil, kerr)
		}
		for _, th := range ts.GetThreads() {
			if k := kernel[int(th.Tid)]; k != nil && ts.SignalsRecorded {
				th.AltstackSp, th.AltstackSize, th.AltstackFlags, th.ClearChildTid = k.AltSP, k.AltSize, k.AltFlags, k.ClearChildTID
			}
		}
		if terr != nil {
			return terr
		}
		img.Tasks = append(img.Tasks, ts)
	}
	img.PagesSize = uint64(w.off)
	if img.Pipes, err = pipes.resolve(); err != nil {
		return err
	}
	// No fsync: at disk speed it would cost more than the whole copy;
	// pages_size in state.img catches a file cut short.
	if err := imagefile.WriteState(dir, img); err != nil {
		return err
	}
	tr.StateRecorded = true
	return nil
}

func recordTask(proc string, t *pstree.Task, w *pageWriter, pipes pipeSet, onTracer func(func()), seizeIt bool) (*imagepb.TaskSaved, error) {
	pid := t.PID()
	ts := &imagepb.TaskSaved{Pid: int64(pid)}
	if err := recordStatus(proc, pid, len(t.Threads)+1, ts); err != nil {
		return nil, err
	}
	if err := recordFiles(proc, pid, ts, pipes); err != nil {
		return nil, err
	}
	var err error
	var threads []int
	for _, th := range t.Threads {
		threads = append(threads, th.TIDs[0])
	}
	onTracer(func() { err = recordRegs(pid, ts, threads, seizeIt) })
	if err != nil {
		return nil, err
	}
	for _, th := range ts.Threads {
		s, err := readStatus(proc, int(th.Tid))
		if err != nil {
			return nil, err
		}
		th.SigBlocked, th.SigPending = s.SigBlk, s.SigPnd
		if got := queued(th.Pending); got != s.SigPnd {
			return nil, fmt.Errorf("thread %d: queued signals %016x, /proc says %016x pending", th.Tid, got, s.SigPnd)
		}
	}
	if err := recordMM(proc, pid, ts); err != nil {
		return nil, err
	}
	maps, err := readMaps(proc, pid, true)
	if err != nil {
		return nil, err
	}
	if len(maps) > maxVMAs {
		return nil, fmt.Errorf("%w: pid %d has %d mappings", ErrUnsupported, pid, len(maps))
	}
	mem, err := os.Open(fmt.Sprintf("%s/%d/mem", proc, pid))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	pm, err := os.Open(fmt.Sprintf("%s/%d/pagemap", proc, pid))
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	for _, m := range maps {
		v, err := recordVMA(proc, pid, m, w, mem, pm, ts)
		if err != nil {
			return nil, err
		}
		if v != nil {
			ts.Vmas = append(ts.Vmas, v)
		}
	}
	return ts, nil
}

// readStatus reads /proc/PID/status (or a thread's, by its tid) for the
// signal sets, the umask and the thread count.
func readStatus(proc string, pid int) (procfs.Status, error) {
	return procfs.New(proc).Status(pid)
}

// pending is every signal pending for the thread: its own queue and its
// process's shared one.
func pending(s procfs.Status) uint64 { return s.SigPnd | s.ShdPnd }

// readLimits parses /proc/PID/limits: one line per resource in the
// kernel's order (RLIMIT_CPU first), "%-25s %-20s %-20s %-10s".
func readLimits(proc string, pid int) ([]*imagepb.Rlimit, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/limits", proc, pid))
	if err != nil {
		return nil, err
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) < 2 {
		return nil, fmt.Errorf("%s/%d/limits: %d lines", proc, pid, len(ls))
	}
	var out []*imagepb.Rlimit
	for _, l := range ls[1:] {
		if len(l) < 67 {
			return nil, fmt.Errorf("%s/%d/limits: line %q", proc, pid, l)
		}
		var v [2]uint64
		for i, f := range []string{l[26:46], l[47:67]} {
			f = strings.TrimSpace(f)
			if f == "unlimited" {
				v[i] = ^uint64(0)
			} else if v[i], err = strconv.ParseUint(f, 10, 64); err != nil {
				return nil, fmt.Errorf("%s/%d/limits: line %q", proc, pid, l)
			}
		}
		out = append(out, &imagepb.Rlimit{Soft: v[0], Hard: v[1]})
	}
	return out, nil
}

// recordSignals adds what the eBPF iterator read (k, nil when it could not
// run: tried says whether it was asked, why the error) and refuses a task
// with handlers without it. The iterator and /proc must agree on which
// signals are caught and ignored.
func recordSignals(ts *imagepb.TaskSaved, k *bpf.TaskSignals, tried bool, why error) error {
	caught := ts.GetSigCaught()
	if k == nil {
		if caught == 0 {
			return nil
		}
		reason := "the dump runs without eBPF (--unchecked)"
		if tried {
			reason = fmt.Sprintf("the eBPF task iterator did not report it (%v)", why)
		}
		return fmt.Errorf("%w: pid %d has signal handlers (SigCgt %016x), which only an eBPF task iterator can read, and %s", ErrUnsupported, ts.GetPid(), caught, reason)
	}
	ts.SignalsRecorded = true
	for i, a := range k.Actions {
		sig := uint32(i + 1)
		bit := uint64(1) << i
		switch {
		case a.Handler > 1:
			if caught&bit == 0 {
				return fmt.Errorf("pid %d: signal %d has a handler the iterator saw and /proc did not", ts.GetPid(), sig)
			}
			ts.Handlers = append(ts.Handlers, &imagepb.SigHandler{Sig: sig, Handler: a.Handler, Flags: a.Flags, Restorer: a.Restorer, Mask: a.Mask})
		case (a.Handler == 1) != (ts.GetSigIgnored()&bit != 0), caught&bit != 0:
			return fmt.Errorf("pid %d: signal %d: the iterator and /proc disagree on its disposition", ts.GetPid(), sig)
		}
	}
	ts.AltstackSp, ts.AltstackSize, ts.AltstackFlags = k.AltSP, k.AltSize, k.AltFlags
	ts.ClearChildTid, ts.PdeathSignal = k.ClearChildTID, k.PdeathSignal
	return nil
}

// recordStatus reads the signal state, umask and thread count of
// /proc/PID/status and the personality, and refuses what cannot come
// back yet.
func recordStatus(proc string, pid, threads int, ts *imagepb.TaskSaved) error {
	s, err := readStatus(proc, pid)
	if err != nil {
		return err
	}
	if s.Threads != threads {
		return fmt.Errorf("pid %d has %d threads, the tree read %d: %w", pid, s.Threads, threads, errMovedState)
	}
	ts.SigBlocked, ts.SigIgnored, ts.SigCaught, ts.SigPending, ts.Umask = s.SigBlk, s.SigIgn, s.SigCgt, pending(s), s.Umask
	if t, err := os.ReadFile(fmt.Sprintf("%s/%d/timers", proc, pid)); err == nil && len(t) > 0 {
		return fmt.Errorf("%w: pid %d has POSIX timers: not recorded yet", ErrUnsupported, pid)
	}
	p, err := os.ReadFile(fmt.Sprintf("%s/%d/personality", proc, pid))
	if err != nil {
		return err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(p)), 16, 32)
	if err != nil {
		return fmt.Errorf("personality of pid %d: %w", pid, err)
	}
	ts.Personality = uint32(n)
	if ts.Rlimits, err = readLimits(proc, pid); err != nil {
		return err
	}
	return nil
}

// recordRegs reads the registers, rseq registration, robust futex list
// and queued signals of the leader and of every other thread of a
// stopped tracee (seizing each first when seizeIt, and letting it go
// after).
func recordRegs(pid int, ts *imagepb.TaskSaved, threads []int, seizeIt bool) error {
	if seizeIt {
		if err := seize(pid, 0); err != nil {
			return err
		}
		defer ptrace(unix.PTRACE_DETACH, pid, 0, 0)
	}
	lead, err := readThread(pid, false)
	if err != nil {
		return err
	}
	ts.Regs, ts.Xstate, ts.Fpregs = lead.Regs, lead.Xstate, lead.Fpregs
	ts.RseqAddr, ts.RseqLen, ts.RseqSig = lead.RseqAddr, lead.RseqLen, lead.RseqSig
	ts.RobustList, ts.RobustListLen = lead.RobustList, lead.RobustListLen
	ts.PendingPrivate = lead.Pending
	if ts.PendingShared, err = peekSiginfo(pid, true); err != nil {
		return err
	}
	if got, want := pendingSet(ts), ts.GetSigPending(); got != want {
		return fmt.Errorf("pid %d: queued signals %016x, /proc says %016x pending", pid, got, want)
	}
	for _, tid := range threads {
		th, err := readThread(tid, seizeIt)
		if err != nil {
			return err
		}
		ts.Threads = append(ts.Threads, th)
	}
	return nil
}

// readThread reads what belongs to one stopped thread.
func readThread(tid int, seizeIt bool) (*imagepb.ThreadSaved, error) {
	if seizeIt {
		if err := seize(tid, 0); err != nil {
			return nil, err
		}
		defer ptrace(unix.PTRACE_DETACH, tid, 0, 0)
	}
	th := &imagepb.ThreadSaved{Tid: int64(tid)}
	var err error
	if th.Regs, err = getRegSet(tid, ntPRStatus, make([]byte, regsSize)); err != nil {
		return nil, err
	}
	// A CPU without XSAVE (QEMU's TCG) has no NT_X86_XSTATE: the FXSAVE
	// area holds all there is then.
	xs, err := getRegSet(tid, ntX86XState, make([]byte, maxXState))
	switch {
	case errors.Is(err, unix.ENODEV):
		if th.Fpregs, err = getRegSet(tid, ntPRFPReg, make([]byte, fpregsSize)); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	default:
		th.Xstate = xs
	}
	rc, err := getRseq(tid)
	if err != nil {
		return nil, fmt.Errorf("rseq of thread %d: %w", tid, err)
	}
	if rc.Flags != 0 {
		return nil, fmt.Errorf("%w: thread %d has rseq flags %#x", ErrUnsupported, tid, rc.Flags)
	}
	th.RseqAddr, th.RseqLen, th.RseqSig = rc.Addr, rc.Len, rc.Sig
	if th.Pending, err = peekSiginfo(tid, false); err != nil {
		return nil, err
	}
	var head, n uint64
	if _, _, e := unix.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&n))); e != 0 {
		return nil, fmt.Errorf("get_robust_list of thread %d: %w", tid, e)
	}
	th.RobustList, th.RobustListLen = head, n
	return th, nil
}

// recordMM reads the layout prctl(PR_SET_MM_MAP) restores: /proc/PID/stat
// fields 26-28 and 45-51, and /proc/PID/auxv. The current brk is not
// shown anywhere; the end of the [heap] mapping stands for it (set in
// recordVMA), start_brk without one.
func recordMM(proc string, pid int, ts *imagepb.TaskSaved) error {
	st, err := procfs.New(proc).Stat(pid)
	if err != nil {
		return err
	}
	auxv, err := os.ReadFile(fmt.Sprintf("%s/%d/auxv", proc, pid))
	if err != nil {
		return err
	}
	m := st.MM
	ts.Mm = &imagepb.MMLayout{
		StartCode: m.StartCode, EndCode: m.EndCode, StartStack: m.StartStack,
		StartData: m.StartData, EndData: m.EndData, StartBrk: m.StartBrk, Brk: m.StartBrk,
		ArgStart: m.ArgStart, ArgEnd: m.ArgEnd, EnvStart: m.EnvStart, EnvEnd: m.EnvEnd,
		Auxv: auxv,
	}
	return nil
}

// recordFiles records the open descriptors: regular files and the
// Devices by path, flags and offset, pipes by inode (pipes.go);
// descriptors 0, 1 and 2 of any other kind (a terminal, a socket) as "the
// restorer's own" (no path), as the other payloads give theirs; anything
// else is refused by fd and kind.
func recordFiles(proc string, pid int, ts *imagepb.TaskSaved, pipes pipeSet) error {
	dir := fmt.Sprintf("%s/%d/fd", proc, pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, e.Name()), &st); err != nil {
			return fmt.Errorf("pid %d fd %d (%s): %w", pid, fd, link, err)
		}
		flags, pos, err := fdinfo(proc, pid, fd)
		if err != nil {
			return err
		}
		of := &imagepb.OpenFile{Fd: int32(fd), Flags: flags, Pos: pos}
		kind := link
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFREG && strings.HasPrefix(link, "/") && !strings.HasSuffix(link, " (deleted)"):
			of.Path = []byte(link)
		case st.Mode&unix.S_IFMT == unix.S_IFCHR && Devices[st.Rdev] != "":
			of.Path = []byte(Devices[st.Rdev])
		case st.Mode&unix.S_IFMT == unix.S_IFIFO && strings.HasPrefix(link, "pipe:["):
			of.Pipe = st.Ino // kept if the tree holds both ends (pipeSet.resolve)
			pipes[st.Ino] = append(pipes[st.Ino], pipeEnd{pid, of})
		case fd <= 2:
			// the restorer's own stdio (no path)
		case st.Mode&unix.S_IFMT == unix.S_IFREG:
			kind = "a deleted or unreachable file " + link
			fallthrough
		default:
			return fmt.Errorf("%w: pid %d fd %d is %s: only regular files, pipes and %s are restored yet", ErrUnsupported, pid, fd, kind, "/dev/null, /dev/zero, /dev/random, /dev/urandom")
		}
		ts.Files = append(ts.Files, of)
	}
	return nil
}

func fdinfo(proc string, pid, fd int) (flags uint32, pos int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/fdinfo/%d", proc, pid, fd))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			pos, _ = strconv.ParseInt(v, 10, 64)
		case "flags":
			n, _ := strconv.ParseUint(v, 8, 32)
			flags = uint32(n)
		}
	}
	return flags, pos, nil
}

// recordVMA records one mapping and the pages of it that must be stored:
// present or swapped, anonymous (a private file mapping's own copies,
// pagemap's "file" bit clear), and not all zero. nil for [vsyscall],
// which is not part of the address space.
func recordVMA(proc string, pid int, m mapping, w *pageWriter, mem, pm *os.File, ts *imagepb.TaskSaved) (*imagepb.VMA, error) {
	if m.path == "[vsyscall]" {
		return nil, nil
	}
	v := &imagepb.VMA{Start: m.start, End: m.end, Prot: m.prot, Shared: m.shared, GrowsDown: m.growsDown}
	// A shared mapping of a file that can never be written through it
	// (glibc's gconv cache, say) holds nothing but the file: it is mapped
	// again. Any other shared mapping is memory between tasks.
	if m.shared && (m.inode == 0 || m.prot&unix.PROT_WRITE != 0 || m.mayWrite) {
		return nil, fmt.Errorf("%w: pid %d maps %v shared and writable: shared memory is not restored yet", ErrUnsupported, pid, m)
	}
	switch m.path {
	case "[vdso]":
		v.Kind = imagepb.VMAKind_VMA_VDSO
		b := make([]byte, m.end-m.start)
		if _, err := mem.ReadAt(b, int64(m.start)); err != nil {
			return nil, fmt.Errorf("read vdso of pid %d: %w", pid, err)
		}
		sum := sha256.Sum256(b)
		ts.VdsoSha256 = sum[:]
		return v, nil
	case "[vvar]":
		v.Kind = imagepb.VMAKind_VMA_VVAR
		return v, nil
	case "[vvar_vclock]":
		v.Kind = imagepb.VMAKind_VMA_VVAR_VCLOCK
		return v, nil
	}
	if m.path == "[heap]" {
		ts.Mm.Brk = m.end
	}
	if m.inode != 0 {
		var st unix.Stat_t
		mf := fmt.Sprintf("%s/%d/map_files/%x-%x", proc, pid, m.start, m.end)
		if err := unix.Stat(mf, &st); err != nil {
			return nil, fmt.Errorf("pid %d mapping %v: %w", pid, m, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || !strings.HasPrefix(m.path, "/") || strings.HasSuffix(m.path, " (deleted)") {
			return nil, fmt.Errorf("%w: pid %d maps %v, not a regular file reachable by path", ErrUnsupported, pid, m)
		}
		v.Kind, v.Path, v.Offset, v.Dev, v.Inode = imagepb.VMAKind_VMA_FILE, []byte(m.path), m.offset, m.dev, m.inode
	}
	// The pagemap entries of the mapping, 8 bytes a page.
	n := (m.end - m.start) / pageSize
	ents := make([]byte, n*8)
	if _, err := pm.ReadAt(ents, int64(m.start/pageSize*8)); err != nil {
		return nil, fmt.Errorf("pagemap of pid %d at %v: %w", pid, m, err)
	}
	if m.shared {
		return v, nil // its pages are the file's
	}
	wanted := func(i uint64) bool {
		e := binary.LittleEndian.Uint64(ents[i*8:])
		return e&pmSwapped != 0 || (e&pmPresent != 0 && e&pmFile == 0)
	}
	for i := uint64(0); i < n; {
		if !wanted(i) {
			i++
			continue
		}
		j := i
		for j < n && wanted(j) && (j-i)*pageSize < readChunk {
			j++
		}
		runs, err := w.copy(pid, m, m.start+i*pageSize, int(j-i), mem)
		if err != nil {
			return nil, err
		}
		v.Pages = appendRuns(v.Pages, runs)
		i = j
	}
	return v, nil
}

// appendRuns appends runs, merging one that continues the last in both
// memory and pages.img.
func appendRuns(to, runs []*imagepb.PageRun) []*imagepb.PageRun {
	for _, r := range runs {
		if k := len(to); k > 0 {
			l := to[k-1]
			if l.Addr+l.Npages*pageSize == r.Addr && l.Offset+l.Npages*pageSize == r.Offset {
				l.Npages += r.Npages
				continue
			}
		}
		to = append(to, r)
	}
	return to
}

// pageWriter appends pages to pages.img.
type pageWriter struct {
	f   *os.File
	buf []byte
	off int64
}

// copy reads npages from addr of pid and appends the ones that are not
// all zero, returning where they went. A readable mapping is read with
// process_vm_readv (one copy); others (PROT_NONE with contents) through
// /proc/PID/mem, which may read them.
func (w *pageWriter) copy(pid int, m mapping, addr uint64, npages int, mem *os.File) ([]*imagepb.PageRun, error) {
	b := w.buf[:npages*pageSize]
	var err error
	if m.prot&unix.PROT_READ != 0 {
		local := []unix.Iovec{{Base: &b[0]}}
		local[0].SetLen(len(b))
		remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}
		var n int
		n, err = unix.ProcessVMReadv(pid, local, remote, 0)
		if err == nil && n != len(b) {
			err = fmt.Errorf("short read: %d of %d bytes", n, len(b))
		}
	} else {
		_, err = mem.ReadAt(b, int64(addr))
	}
	if err != nil {
		return nil, fmt.Errorf("read memory of pid %d at %#x (%v): %w", pid, addr, m, err)
	}
	var runs []*imagepb.PageRun
	for i := 0; i < npages; {
		if zero(b[i*pageSize : (i+1)*pageSize]) {
			i++
			continue
		}
		j := i + 1
		for j < npages && !zero(b[j*pageSize:(j+1)*pageSize]) {
			j++
		}
		if _, err := w.f.Write(b[i*pageSize : j*pageSize]); err != nil {
			return nil, err
		}
		runs = append(runs, &imagepb.PageRun{Addr: addr + uint64(i)*pageSize, Npages: uint64(j - i), Offset: uint64(w.off)})
		w.off += int64(j-i) * pageSize
		i = j
	}
	return runs, nil
}

// zero says whether a page holds only zero bytes.
func zero(p []byte) bool {
	ws := unsafe.Slice((*uint64)(unsafe.Pointer(&p[0])), len(p)/8)
	for _, x := range ws {
		if x != 0 {
			return false
		}
	}
	return true
}
