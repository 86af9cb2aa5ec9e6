package supervise

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// spawnAttr is everything the child path needs, prepared before the fork
// so that the child only makes raw system calls.
type spawnAttr struct {
	path    string
	argv    []string
	env     []string
	blocked uint64 // signal mask the command starts with
	// blockedUnknown: nsinit could not read its original mask; the command
	// gets the forking thread's mask, as os/exec would give it.
	blockedUnknown bool
	ignored        uint64 // signals the command starts with ignored
	// foreground makes the command's new process group the foreground
	// group of the controlling terminal on fd 0.
	foreground bool
}

// kernelSigaction is struct sigaction as rt_sigaction(2) takes it on Linux.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// spawn starts the command in a new process group with exactly the signal
// mask and ignored signals of attr; every other signal is at its default.
//
// os/exec cannot do this: its child restores the mask of the forking Go
// thread, from which the runtime has removed the signals it insists on
// receiving (SIGCHLD, SIGINT, SIGTERM...), and it resets ignored signals the
// runtime had taken over. So nsinit forks itself, with a child path in the
// style of syscall.forkAndExecInChild: raw system calls only, errno reported
// on a close-on-exec pipe (EOF means the exec succeeded).
func spawn(attr spawnAttr) (int, error) {
	path, err := syscall.BytePtrFromString(attr.path)
	if err != nil {
		return 0, err
	}
	argv, err := syscall.SlicePtrFromStrings(attr.argv)
	if err != nil {
		return 0, err
	}
	envv, err := syscall.SlicePtrFromStrings(attr.env)
	if err != nil {
		return 0, err
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return 0, fmt.Errorf("spawn pipe: %w", err)
	}
	rd, wr := os.NewFile(uintptr(p[0]), "spawn-errno"), p[1]
	defer rd.Close()

	// Block every signal on this thread across the fork: the child must not
	// run a Go signal handler before it has reset the dispositions.
	runtime.LockOSThread()
	saved := blockAllSignals()
	if attr.blockedUnknown {
		attr.blocked = saved
	}
	pid, errno := forkExecChild(path, argv, envv, &attr, wr)
	setThreadMask(saved)
	runtime.UnlockOSThread()
	syscall.Close(wr)
	if errno != 0 {
		return 0, fmt.Errorf("fork: %w", errno)
	}

	var buf [4]byte
	n, _ := rd.Read(buf[:])
	if n == 0 {
		return pid, nil // EOF: the exec closed the pipe
	}
	// The exec failed; the child reported errno and exited.
	var ws syscall.WaitStatus
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != syscall.EINTR {
			break
		}
	}
	code := *(*int32)(unsafe.Pointer(&buf[0]))
	return 0, syscall.Errno(code)
}

// forkExecChild forks; the child sets up and execs, the parent returns the
// child's pid.
//
// The child runs on a copy of this goroutine's stack with one thread and no
// scheduler: from the fork on it must not allocate, take locks, grow the
// stack or call anything but nosplit code and raw system calls.
//
//go:nosplit
//go:norace
func forkExecChild(path *byte, argv, envv []*byte, attr *spawnAttr, errPipe int) (pid int, errno syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	if r != 0 {
		return int(r), 0
	}

	// Child. Signal dispositions: ignored ones as nsinit found them, the
	// rest at their defaults (the Go runtime's handlers must go).
	var act kernelSigaction
	for s := uintptr(1); s <= MaxSignal; s++ {
		if s == uintptr(syscall.SIGKILL) || s == uintptr(syscall.SIGSTOP) {
			continue
		}
		act.handler = 0 // SIG_DFL
		if attr.ignored&(1<<(s-1)) != 0 {
			act.handler = 1 // SIG_IGN
		}
		syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, s, uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	}
	// Own process group, and the terminal's foreground when there is one.
	// Every signal is still blocked, so TIOCSPGRP from what is still a
	// background group raises no SIGTTOU.
	if _, _, e = syscall.RawSyscall(syscall.SYS_SETPGID, 0, 0, 0); e != 0 {
		goto fail
	}
	if attr.foreground {
		pgrp, _, _ := syscall.RawSyscall(syscall.SYS_GETPID, 0, 0, 0)
		pg := int32(pgrp)
		if _, _, e = syscall.RawSyscall(syscall.SYS_IOCTL, 0, uintptr(syscall.TIOCSPGRP), uintptr(unsafe.Pointer(&pg))); e != 0 {
			goto fail
		}
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&attr.blocked)), 0, 8, 0, 0)
	_, _, e = syscall.RawSyscall(syscall.SYS_EXECVE,
		uintptr(unsafe.Pointer(path)),
		uintptr(unsafe.Pointer(&argv[0])),
		uintptr(unsafe.Pointer(&envv[0])))

fail:
	code := int32(e)
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(errPipe), uintptr(unsafe.Pointer(&code)), 4)
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 127, 0, 0)
	}
}

// sigSetmask is SIG_SETMASK (asm-generic/signal-defs.h).
const sigSetmask = 2

// blockAllSignals blocks every signal on the calling thread, which must be
// locked to its goroutine, and returns the mask it had (internal/sys's
// BlockAllSignals, without golang.org/x/sys/unix: see the package comment).
func blockAllSignals() (old uint64) {
	all := ^uint64(0)
	// Cannot fail: the arguments are valid and SIG_SETMASK is known.
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	return old
}

// setThreadMask sets the calling thread's signal mask.
func setThreadMask(mask uint64) {
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, sigSetmask, uintptr(unsafe.Pointer(&mask)), 0, 8, 0, 0)
}

// foregroundGroup is the foreground process group of the terminal on fd
// (TIOCGPGRP).
func foregroundGroup(fd int) (int, error) {
	var pg int32
	if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TIOCGPGRP, uintptr(unsafe.Pointer(&pg))); e != 0 {
		return 0, e
	}
	return int(pg), nil
}
