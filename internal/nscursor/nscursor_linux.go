// Package nscursor reads and writes the ns_last_pid cursor of a pid
// namespace from outside it. The file acts on the writer's own active pid
// namespace whatever procfs holds it (docs/kernel.md F1.1), so a probe is
// forked into the namespace (setns(CLONE_NEWPID) on a locked thread, then a
// raw fork) and does the read or the write there. The namespace's init must
// be alive: a fork into a namespace whose init died fails with ENOMEM.
package nscursor

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// Read returns the ns_last_pid cursor of the pid namespace held by nsFD,
// and leaves it as it found it.
//
// The cursor can only be read and written from inside the namespace (it is
// always the reader's own active namespace, whatever procfs is used), so a
// probe process is forked into it. The probe's own pid P is the first free
// pid above the cursor, so a cursor of P-1 gives the namespace's next fork
// exactly the pid it would have had (pids between the old cursor and P are
// taken, and skipped either way). The probe writes P-1 back before it exits
// and the result is P-1. The namespace's init must be alive: forking into
// a namespace whose init died fails with ENOMEM.
func Read(nsFD int) (int, error) {
	return probe(nsFD, -1)
}

// Write sets the cursor of the pid namespace held by nsFD to v: the
// namespace's next fork takes the first free pid above v. It is how a
// restorer puts back the cursor of a namespace whose own init lacks the
// capability to (docs/kernel.md F1.2).
func Write(nsFD, v int) error {
	if v < 0 {
		return fmt.Errorf("ns_last_pid %d: negative", v)
	}
	_, err := probe(nsFD, v)
	return err
}

// probe forks a probe into the namespace of nsFD that writes v to the
// cursor, or, for v < 0, its own pid - 1 (the value the cursor had), and
// returns that pid - 1.
func probe(nsFD, v int) (int, error) {
	self, err := unix.Open("/proc/self/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("probe ns_last_pid: %w", err)
	}
	defer unix.Close(self)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return 0, fmt.Errorf("probe ns_last_pid: %w", err)
	}
	rd := os.NewFile(uintptr(p[0]), "lastpid-probe")
	defer rd.Close()
	path, _ := syscall.BytePtrFromString(procfs.LastPIDPath)

	// The fork happens from a thread whose pid_for_children is the target;
	// that thread must be put back before the scheduler gets it again.
	runtime.LockOSThread()
	if err := unix.Setns(nsFD, unix.CLONE_NEWPID); err != nil {
		runtime.UnlockOSThread()
		unix.Close(p[1])
		return 0, fmt.Errorf("probe ns_last_pid: enter pid namespace: %w", err)
	}
	saved := sys.BlockAllSignals()
	pid, errno := forkProbe(path, p[1], v)
	sys.RestoreSignals(saved)
	if err := unix.Setns(self, unix.CLONE_NEWPID); err != nil {
		// Never hand this thread back: it dies with the goroutine.
		unix.Close(p[1])
		runtime.Goexit()
	}
	runtime.UnlockOSThread()
	unix.Close(p[1])
	if errno != 0 {
		return 0, fmt.Errorf("probe ns_last_pid: fork into the namespace: %w", errno)
	}
	var ws syscall.WaitStatus
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != syscall.EINTR {
			break
		}
	}
	var res [8]byte
	if n, _ := rd.Read(res[:]); n != 8 {
		return 0, fmt.Errorf("probe ns_last_pid: probe died (%v)", ws)
	}
	inner := int(*(*int32)(unsafe.Pointer(&res[0])))
	if werr := *(*int32)(unsafe.Pointer(&res[4])); werr != 0 {
		return 0, fmt.Errorf("probe ns_last_pid: write the cursor: %w", syscall.Errno(werr))
	}
	return inner - 1, nil
}

// forkProbe forks the probe. The child runs on a copy of this goroutine's
// stack with one thread and no scheduler: raw system calls only, no
// allocation, no stack growth. It reports {its pid, errno of the write} as
// two int32 on the pipe.
//
//go:nosplit
//go:norace
func forkProbe(path *byte, pipe int, value int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	if r != 0 {
		return int(r), 0
	}
	var res [2]int32
	self, _, _ := syscall.RawSyscall(syscall.SYS_GETPID, 0, 0, 0)
	res[0] = int32(self)
	// Decimal of value (self-1 if negative), written from the end of buf.
	var buf [24]byte
	i := len(buf)
	w := uintptr(value)
	if value < 0 {
		w = self - 1
	}
	for v := w; ; v /= 10 {
		i--
		buf[i] = byte('0' + v%10)
		if v < 10 {
			break
		}
	}
	cwd := unix.AT_FDCWD
	fd, _, e := syscall.RawSyscall6(syscall.SYS_OPENAT, uintptr(cwd), uintptr(unsafe.Pointer(path)), uintptr(unix.O_WRONLY), 0, 0, 0)
	if e == 0 {
		_, _, e = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&buf[i])), uintptr(len(buf)-i))
	}
	res[1] = int32(e)
	syscall.RawSyscall(syscall.SYS_WRITE, uintptr(pipe), uintptr(unsafe.Pointer(&res[0])), 8)
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
	}
}
