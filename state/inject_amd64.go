package state

// Everything that drives a task with ptrace: the tracer thread, stops,
// register sets, and the injection of system calls into a stopped task
// (as CRIU's compel does for its parasite, without a parasite: each call
// is one `syscall; int3` executed in the task).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	ntPRStatus  = 1     // NT_PRSTATUS
	ntX86XState = 0x202 // NT_X86_XSTATE
	ntPRFPReg   = 2     // NT_PRFPREG: struct user_i387_struct

	ptraceGetRseqConfiguration = 0x420f
	ptraceSetSigmask           = 0x420b

	// the three words an injected call runs: syscall; int3
	trapCode = "\x0f\x05\xcc"
)

// tracer runs functions on one locked OS thread: the kernel takes ptrace
// requests for a tracee only from the thread that attached it. The thread
// is never unlocked, so it ends with its goroutine and no tracer state
// goes back to Go's pool.
type tracer struct{ calls chan func() }

func newTracer() *tracer {
	t := &tracer{calls: make(chan func())}
	go func() {
		runtime.LockOSThread()
		for f := range t.calls {
			f()
		}
	}()
	return t
}

func (t *tracer) do(f func()) {
	done := make(chan struct{})
	t.calls <- func() { f(); close(done) }
	<-done
}

func (t *tracer) close() { close(t.calls) }

func ptrace(req, pid int, addr, data uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// seize attaches to pid and stops it (PTRACE_SEIZE + PTRACE_INTERRUPT:
// its parent sees nothing); it returns once pid is in its stop.
func seize(pid int, options uintptr) error {
	if err := ptrace(unix.PTRACE_SEIZE, pid, 0, options); err != nil {
		return fmt.Errorf("ptrace seize pid %d: %w", pid, err)
	}
	if err := ptrace(unix.PTRACE_INTERRUPT, pid, 0, 0); err != nil {
		return fmt.Errorf("ptrace interrupt pid %d: %w", pid, err)
	}
	if _, err := waitStop(pid); err != nil {
		return err
	}
	return nil
}

// waitStop waits for the next stop of tracee pid and returns its status.
func waitStop(pid int) (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait for pid %d: %w", pid, err)
		}
		if !ws.Stopped() {
			return ws, fmt.Errorf("pid %d ended (%s) while traced", pid, describe(ws))
		}
		return ws, nil
	}
}

func describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Sprintf("killed by %v", ws.Signal())
	}
	return fmt.Sprintf("status %#x", uint32(ws))
}

func getRegSet(pid int, nt uintptr, buf []byte) ([]byte, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_GETREGSET, pid, nt, uintptr(unsafe.Pointer(&iov))); err != nil {
		return nil, fmt.Errorf("ptrace getregset %#x of pid %d: %w", nt, pid, err)
	}
	return buf[:iov.Len], nil
}

func setRegSet(pid int, nt uintptr, b []byte) error {
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	if err := ptrace(unix.PTRACE_SETREGSET, pid, nt, uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("ptrace setregset %#x of pid %d: %w", nt, pid, err)
	}
	return nil
}

func getRegs(pid int) (unix.PtraceRegs, error) {
	var r unix.PtraceRegs
	_, err := getRegSet(pid, ntPRStatus, unsafe.Slice((*byte)(unsafe.Pointer(&r)), regsSize))
	return r, err
}

func setRegs(pid int, r *unix.PtraceRegs) error {
	return setRegSet(pid, ntPRStatus, unsafe.Slice((*byte)(unsafe.Pointer(r)), regsSize))
}

func regsOf(b []byte) unix.PtraceRegs {
	var r unix.PtraceRegs
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&r)), regsSize), b)
	return r
}

// Kernel-internal errnos a task interrupted in a system call shows in rax
// at a stop (include/linux/errno.h); the kernel turns them into a restart
// or EINTR on the way back to user space, which a restored task no longer
// takes: resumed puts that right itself.
const (
	errRestartSys     = 512
	errRestartNoIntr  = 513
	errRestartNoHand  = 514
	errRestartBlock   = 516
	sysRestartSyscall = 219
)

// resumed turns recorded registers into the ones to run on: a system call
// interrupted by the freeze is restarted (rip back over the 2-byte
// `syscall`, rax its number again), as the kernel would have done; one
// that needs its restart block (nanosleep, poll with a timeout), which
// died with the old task, returns EINTR as after a signal, as CRIU does.
// orig_rax -1 keeps the kernel from restarting anything again.
func resumed(r unix.PtraceRegs) unix.PtraceRegs {
	if int64(r.Orig_rax) >= 0 {
		switch -int64(r.Rax) {
		case errRestartSys, errRestartNoIntr, errRestartNoHand:
			r.Rax = r.Orig_rax
			r.Rip -= 2
		case errRestartBlock:
			r.Rax = ^uint64(unix.EINTR) + 1 // -EINTR
		}
	}
	r.Orig_rax = ^uint64(0)
	return r
}

// injector runs system calls inside a stopped tracee: each call sets the
// registers to enter `syscall; int3` at code, resumes the task, and takes
// the result at the SIGTRAP of the int3.
type injector struct {
	pid  int
	code uint64          // address of trapCode in the task
	base unix.PtraceRegs // segment registers and flags to run with
	n    int             // calls made, for the figures
}

// errno of a raw system call result.
func errnoOf(rax uint64) error {
	if v := int64(rax); v < 0 && v > -4096 {
		return syscall.Errno(-v)
	}
	return nil
}

// enter sets the registers that make the task run system call nr with
// args from the injected code.
func (in *injector) enter(nr uintptr, args []uint64) error {
	r := in.base
	r.Rip = in.code
	r.Rax = uint64(nr)
	r.Orig_rax = ^uint64(0)
	a := [6]uint64{}
	copy(a[:], args)
	r.Rdi, r.Rsi, r.Rdx, r.R10, r.R8, r.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	return setRegs(in.pid, &r)
}

func (in *injector) call(nr uintptr, args ...uint64) (uint64, error) {
	if err := in.enter(nr, args); err != nil {
		return 0, err
	}
	if err := in.runToTrap(); err != nil {
		return 0, fmt.Errorf("syscall %d: %w", nr, err)
	}
	in.n++
	out, err := getRegs(in.pid)
	if err != nil {
		return 0, err
	}
	if out.Rip != in.code+3 {
		return 0, fmt.Errorf("syscall %d: pid %d stopped at %#x, not after the injected code at %#x", nr, in.pid, out.Rip, in.code)
	}
	return out.Rax, errnoOf(out.Rax)
}

// runToTrap resumes the tracee until the SIGTRAP of the injected int3.
// Other signals met on the way (a SIGCONT or SIGCHLD queued while the
// task was still parked) are suppressed: the task's recorded signal state
// is set afresh later.
func (in *injector) runToTrap() error {
	sig := 0
	for {
		if err := ptrace(unix.PTRACE_CONT, in.pid, 0, uintptr(sig)); err != nil {
			return fmt.Errorf("ptrace cont pid %d: %w", in.pid, err)
		}
		ws, err := waitStop(in.pid)
		if err != nil {
			return err
		}
		if ws.StopSignal() == unix.SIGTRAP && ws.TrapCause() <= 0 {
			return nil
		}
		sig = 0
	}
}

// syscallExit runs one call with PTRACE_SYSCALL and leaves the tracee at
// its syscall-exit stop: for the call that unmaps the injected code
// itself, after which there is no int3 to stop at.
func (in *injector) syscallExit(nr uintptr, args ...uint64) error {
	if err := in.enter(nr, args); err != nil {
		return err
	}
	stops := 0
	for stops < 2 { // syscall-enter, then syscall-exit
		if err := ptrace(unix.PTRACE_SYSCALL, in.pid, 0, 0); err != nil {
			return fmt.Errorf("ptrace syscall pid %d: %w", in.pid, err)
		}
		ws, err := waitStop(in.pid)
		if err != nil {
			return err
		}
		if ws.StopSignal() == unix.SIGTRAP|0x80 {
			stops++
		}
	}
	out, err := getRegs(in.pid)
	if err != nil {
		return err
	}
	in.n++
	return errnoOf(out.Rax)
}

// peekPoke writes b (at most a word) at addr of a stopped tracee through
// PTRACE_POKETEXT, which writes read-only text too (FOLL_FORCE).
func pokeWord(pid int, addr uint64, b []byte) error {
	var w [8]byte
	if _, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKTEXT, uintptr(pid), uintptr(addr), uintptr(unsafe.Pointer(&w[0])), 0, 0); e != 0 {
		return fmt.Errorf("ptrace peek pid %d at %#x: %w", pid, addr, e)
	}
	copy(w[:], b)
	if err := ptrace(unix.PTRACE_POKETEXT, pid, uintptr(addr), uintptr(binary.LittleEndian.Uint64(w[:]))); err != nil {
		return fmt.Errorf("ptrace poke pid %d at %#x: %w", pid, addr, err)
	}
	return nil
}

// peekSiginfo returns the siginfo_t (128 bytes each) of the signals queued
// for a stopped tracee: its own queue, or its process's when shared.
func peekSiginfo(pid int, shared bool) ([][]byte, error) {
	var out [][]byte
	buf := make([]byte, 32*siginfoSize)
	for {
		args := struct {
			Off   uint64
			Flags uint32
			Nr    int32
		}{Off: uint64(len(out)), Nr: 32}
		if shared {
			args.Flags = 1 // PTRACE_PEEKSIGINFO_SHARED
		}
		n, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(pid), uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if e != 0 {
			return nil, fmt.Errorf("ptrace peeksiginfo of pid %d: %w", pid, e)
		}
		if n == 0 {
			return out, nil
		}
		for i := 0; i < int(n); i++ {
			out = append(out, append([]byte(nil), buf[i*siginfoSize:(i+1)*siginfoSize]...))
		}
	}
}

// rseqConfig is struct ptrace_rseq_configuration.
type rseqConfig struct {
	Addr  uint64
	Len   uint32
	Sig   uint32
	Flags uint32
	_     uint32
}

func getRseq(pid int) (rseqConfig, error) {
	var c rseqConfig
	err := ptrace(ptraceGetRseqConfiguration, pid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c)))
	if errors.Is(err, unix.EIO) {
		return rseqConfig{}, nil // kernels before 5.13: none recorded
	}
	if c.Addr == 0 {
		// None registered (a program caught before its C library's
		// start-up did it). Kernels before 6.3 give the size anyway.
		c = rseqConfig{}
	}
	return c, err
}
