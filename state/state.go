// Package state records what runs inside the live tasks of a frozen tree -
// memory, registers, signal mask, open files - and puts it back into the
// tasks a stopped-payload restore created, so that they go on from the
// instruction they were stopped at (docs/state.md).
//
// Recording (Record) reads /proc and, through ptrace, the registers;
// page contents go to DIR/pages.img, everything else to DIR/state.img
// (imagefile.WriteState). Restoring (Restore) drives each task with
// ptrace: it has the task exec its program to get an address space of its
// own, then injects the system calls that rebuild the recorded one
// (inject_amd64.go), sets the registers and lets it go.
//
// What this first slice cannot bring back is refused by name, at dump
// time and again at restore time: nothing is dropped silently.
package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/nsinit/nsinit/bpf"
	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// PagesFileName holds the page contents, raw, beside state.img.
const PagesFileName = "pages.img"

const pageSize = 4096

// Signals reads what /proc does not show of the signal state of the
// given processes (level-0 pids): bpf.Signals.
type Signals func(pids []int) (map[int]*bpf.TaskSignals, error)

// Options tune Restore.
type Options struct {
	// Proc is the procfs of the restorer's pid namespace ("/proc").
	Proc string
	// NullStdio gives /dev/null to the descriptors 0-2 recorded as "the
	// restorer's own" (a detached restore), instead of the restorer's.
	NullStdio bool
	// Log receives progress notes; may be nil.
	Log func(format string, args ...any)
}

// HasState says whether the image in dir was dumped with its state.
func HasState(tr *pstree.Tree) bool { return tr.StateRecorded }

// ErrUnsupported is wrapped when a task holds state this slice cannot
// record or restore (exit status 204); the message names the task and what.
var ErrUnsupported = errors.New("unsupported task state")

// ErrPIDTaken is wrapped when a thread cannot be made again because its
// pid was taken after the tree was restored (exit status 202, as for the
// tree's own pids): the restorer's parked host cursor protects the tree's
// pids, not those of the threads this package re-creates afterwards.
var ErrPIDTaken = errors.New("pid already taken")

// ErrBadState is wrapped when state.img or pages.img is malformed or does
// not fit the tree of pstree.img (exit status 201).
var ErrBadState = errors.New("malformed task state")

// taskSize is the top of the x86-64 user address space (4-level paging:
// TASK_SIZE_MAX, 2^47 minus a guard page); with 5-level paging the kernel
// maps above it only for tasks that ask, which we refuse.
const taskSize = 1<<47 - pageSize

// regsSize is NT_PRSTATUS on x86-64: struct user_regs_struct, 27 words.
const regsSize = 27 * 8

// fpregsSize is NT_PRFPREG on x86-64: struct user_i387_struct.
const fpregsSize = 512

// maxXState bounds NT_X86_XSTATE: the largest layout (AMX) is about 11 KiB.
const maxXState = 64 << 10

// siginfoSize is sizeof(siginfo_t); maxPending bounds the queued signals
// of a task (RLIMIT_SIGPENDING is far lower in practice).
const (
	siginfoSize = 128
	maxPending  = 1 << 16
)

// maxVMAs bounds a task's mappings: the default vm.max_map_count (65530).
const maxVMAs = 1 << 16

// Devices are the character devices an open descriptor may be, by
// device number (major 1: mem): the restore opens them again by path.
var Devices = map[uint64]string{
	unix.Mkdev(1, 3): "/dev/null",
	unix.Mkdev(1, 5): "/dev/zero",
	unix.Mkdev(1, 8): "/dev/random",
	unix.Mkdev(1, 9): "/dev/urandom",
}

// stateful says whether a task of the image has state recorded: live,
// not an nsinit agent (restored by running it again).
func stateful(t *pstree.Task) bool {
	return t.State != pstree.Zombie && !t.Agent
}

// Validate checks a state image against its tree and the size of
// pages.img: one entry per stateful task and none else, sorted
// page-aligned mappings inside the user address space, page runs inside
// their mapping and inside pages.img, registers of the right size. Every
// address the restore writes to comes from here, so it runs before
// anything is touched.
func Validate(tr *pstree.Tree, s *imagepb.StateImage, pagesSize uint64) error {
	if s.GetPagesSize() != pagesSize {
		return fmt.Errorf("%w: %s has %d bytes, state.img says %d", ErrBadState, PagesFileName, pagesSize, s.GetPagesSize())
	}
	want := map[int64]bool{}
	tasks := map[int64]*pstree.Task{}
	for i := range tr.Tasks {
		if t := &tr.Tasks[i]; stateful(t) {
			want[int64(t.PID())] = true
			tasks[int64(t.PID())] = t
		}
	}
	pipes := map[uint64]bool{}
	for _, p := range s.GetPipes() {
		if p.GetId() == 0 || pipes[p.GetId()] || p.GetSize() > maxPipeSize || len(p.GetData()) > int(p.GetSize()) {
			return fmt.Errorf("%w: pipe %d: twice, or %d bytes in a pipe of %d", ErrBadState, p.GetId(), len(p.GetData()), p.GetSize())
		}
		pipes[p.GetId()] = true
	}
	seen := map[int64]bool{}
	for _, ts := range s.GetTasks() {
		pid := ts.GetPid()
		if !want[pid] || seen[pid] {
			return fmt.Errorf("%w: state of pid %d, which is no live task of the image or comes twice", ErrBadState, pid)
		}
		seen[pid] = true
		if err := validateTask(ts, pagesSize, pipes); err != nil {
			return fmt.Errorf("%w: pid %d: %w", ErrBadState, pid, err)
		}
		if err := validateThreads(tasks[pid], ts); err != nil {
			return fmt.Errorf("%w: pid %d: %w", ErrBadState, pid, err)
		}
	}
	for pid := range want {
		if !seen[pid] {
			return fmt.Errorf("%w: no state for live pid %d", ErrBadState, pid)
		}
	}
	return nil
}

func validateTask(ts *imagepb.TaskSaved, pagesSize uint64, pipes map[uint64]bool) error {
	if len(ts.GetRegs()) != regsSize {
		return fmt.Errorf("registers of %d bytes, want %d", len(ts.GetRegs()), regsSize)
	}
	if n := len(ts.GetXstate()); n > maxXState {
		return fmt.Errorf("xstate of %d bytes, more than %d", n, maxXState)
	}
	if n := len(ts.GetFpregs()); n != 0 && (n != fpregsSize || len(ts.GetXstate()) > 0) {
		return fmt.Errorf("fpregs of %d bytes beside %d of xstate", n, len(ts.GetXstate()))
	}
	if n := len(ts.GetMm().GetAuxv()); n > 1024 || n%16 != 0 {
		return fmt.Errorf("auxv of %d bytes", n)
	}
	if len(ts.GetVmas()) > maxVMAs {
		return fmt.Errorf("%d mappings, more than %d", len(ts.GetVmas()), maxVMAs)
	}
	var prev uint64
	specials := map[imagepb.VMAKind]bool{}
	for _, v := range ts.GetVmas() {
		start, end := v.GetStart(), v.GetEnd()
		if start%pageSize != 0 || end%pageSize != 0 || start >= end || end > taskSize || start < prev {
			return fmt.Errorf("mapping %#x-%#x: not page-aligned, empty, overlapping or outside the user address space", start, end)
		}
		prev = end
		if v.GetProt()&^uint32(unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC) != 0 {
			return fmt.Errorf("mapping %#x: protection %#x", start, v.GetProt())
		}
		if v.GetShared() && (v.GetKind() != imagepb.VMAKind_VMA_FILE || v.GetProt()&unix.PROT_WRITE != 0 || len(v.GetPages()) > 0) {
			return fmt.Errorf("%w: mapping %#x-%#x is shared and not a read-only file", ErrUnsupported, start, end)
		}
		switch k := v.GetKind(); k {
		case imagepb.VMAKind_VMA_ANON:
		case imagepb.VMAKind_VMA_FILE:
			if err := validPath(v.GetPath()); err != nil {
				return fmt.Errorf("mapping %#x: %w", start, err)
			}
			if v.GetOffset()%pageSize != 0 {
				return fmt.Errorf("mapping %#x: file offset %#x not page-aligned", start, v.GetOffset())
			}
		case imagepb.VMAKind_VMA_VDSO, imagepb.VMAKind_VMA_VVAR, imagepb.VMAKind_VMA_VVAR_VCLOCK:
			if specials[k] || len(v.GetPages()) > 0 {
				return fmt.Errorf("mapping %#x: a second %v, or one with contents", start, k)
			}
			specials[k] = true
		default:
			return fmt.Errorf("mapping %#x: kind %v", start, k)
		}
		at := start
		for _, r := range v.GetPages() {
			n := r.GetNpages()
			if r.GetAddr() < at || n == 0 || n > (end-start)/pageSize || r.GetAddr()+n*pageSize > end ||
				r.GetOffset()%pageSize != 0 || r.GetOffset() > pagesSize || n*pageSize > pagesSize-r.GetOffset() {
				return fmt.Errorf("mapping %#x: page run at %#x (%d pages at offset %d) outside its mapping or %s", start, r.GetAddr(), n, r.GetOffset(), PagesFileName)
			}
			at = r.GetAddr() + n*pageSize
		}
	}
	if !specials[imagepb.VMAKind_VMA_VDSO] {
		return errors.New("no vdso recorded")
	}
	var caught uint64
	for _, h := range ts.GetHandlers() {
		sig := h.GetSig()
		if sig < 1 || sig > 64 || sig == uint32(unix.SIGKILL) || sig == uint32(unix.SIGSTOP) || caught&(1<<(sig-1)) != 0 || h.GetHandler() <= 1 {
			return fmt.Errorf("handler of signal %d", sig)
		}
		caught |= 1 << (sig - 1)
	}
	if caught != ts.GetSigCaught() || caught&ts.GetSigIgnored() != 0 || (caught != 0 && !ts.GetSignalsRecorded()) {
		return fmt.Errorf("handlers for %016x, caught %016x, ignored %016x", caught, ts.GetSigCaught(), ts.GetSigIgnored())
	}
	if n := len(ts.GetPendingPrivate()) + len(ts.GetPendingShared()); n > maxPending {
		return fmt.Errorf("%d queued signals, more than %d", n, maxPending)
	}
	for _, q := range [][][]byte{ts.GetPendingPrivate(), ts.GetPendingShared()} {
		for _, si := range q {
			if len(si) != siginfoSize {
				return fmt.Errorf("a queued siginfo of %d bytes", len(si))
			}
			if n := binary.LittleEndian.Uint32(si); n < 1 || n > 64 {
				return fmt.Errorf("a queued signal %d", n)
			}
		}
	}
	if pendingSet(ts) != ts.GetSigPending() {
		return fmt.Errorf("queued signals %016x, pending %016x", pendingSet(ts), ts.GetSigPending())
	}
	if n := len(ts.GetRlimits()); n > 64 {
		return fmt.Errorf("%d resource limits", n)
	}
	fds := map[int32]bool{}
	for _, f := range ts.GetFiles() {
		if f.GetFd() < 0 || f.GetFd() >= 1<<20 || fds[f.GetFd()] {
			return fmt.Errorf("fd %d out of range or twice", f.GetFd())
		}
		fds[f.GetFd()] = true
		if f.GetPipe() != 0 {
			if !pipes[f.GetPipe()] || len(f.GetPath()) > 0 || (f.GetFlags()&unix.O_ACCMODE != unix.O_RDONLY && f.GetFlags()&unix.O_ACCMODE != unix.O_WRONLY) {
				return fmt.Errorf("fd %d: pipe %d unknown, or with a path or an access mode other than read or write", f.GetFd(), f.GetPipe())
			}
			continue
		}
		if len(f.GetPath()) == 0 && f.GetFd() > 2 {
			return fmt.Errorf("fd %d without a path", f.GetFd())
		}
		if len(f.GetPath()) > 0 {
			if err := validPath(f.GetPath()); err != nil {
				return fmt.Errorf("fd %d: %w", f.GetFd(), err)
			}
		}
	}
	return nil
}

// validateThreads checks that the threads recorded are the task's other
// threads, one each, with registers of the right size.
func validateThreads(t *pstree.Task, ts *imagepb.TaskSaved) error {
	if len(ts.GetThreads()) != len(t.Threads) {
		return fmt.Errorf("%d threads recorded, the tree has %d", len(ts.GetThreads()), len(t.Threads)+1)
	}
	for i, th := range ts.GetThreads() {
		if th.GetTid() != int64(t.Threads[i].TIDs[0]) {
			return fmt.Errorf("thread %d recorded where the tree has %d", th.GetTid(), t.Threads[i].TIDs[0])
		}
		if len(th.GetRegs()) != regsSize || len(th.GetXstate()) > maxXState || (len(th.GetFpregs()) != 0 && len(th.GetFpregs()) != fpregsSize) {
			return fmt.Errorf("thread %d: registers of %d, %d and %d bytes", th.GetTid(), len(th.GetRegs()), len(th.GetXstate()), len(th.GetFpregs()))
		}
		if len(th.GetPending()) > maxPending || queued(th.GetPending()) != th.GetSigPending() {
			return fmt.Errorf("thread %d: queued signals", th.GetTid())
		}
		for _, si := range th.GetPending() {
			if len(si) != siginfoSize {
				return fmt.Errorf("thread %d: a queued siginfo of %d bytes", th.GetTid(), len(si))
			}
		}
	}
	return nil
}

// validPath: absolute, at most PATH_MAX, no NUL (the restore passes it to
// open as a C string).
func validPath(p []byte) error {
	if len(p) == 0 || p[0] != '/' || len(p) >= pstree.MaxPath || slices.Contains(p, 0) {
		return fmt.Errorf("path %q: not absolute, too long or with a NUL", p)
	}
	return nil
}

// openPages opens DIR/pages.img as hostile input (no symbolic link, a
// regular file) and maps it read-only.
func openPages(dir string) ([]byte, error) {
	p := filepath.Join(dir, PagesFileName)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBadState, p)
	}
	if st.Size() == 0 {
		return []byte{}, nil
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", p, err)
	}
	return b, nil
}

// pendingSet is the set of signals of a task's recorded queues.
func pendingSet(ts *imagepb.TaskSaved) uint64 {
	return queued(ts.GetPendingPrivate()) | queued(ts.GetPendingShared())
}

// queued is the set of signals of siginfos (si_signo is the first int of
// a siginfo_t).
func queued(q [][]byte) uint64 {
	var set uint64
	for _, si := range q {
		if n := binary.LittleEndian.Uint32(si); n >= 1 && n <= 64 {
			set |= 1 << (n - 1)
		}
	}
	return set
}
