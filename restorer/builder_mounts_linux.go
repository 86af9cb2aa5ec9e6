package restorer

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// doMounts performs a mounter's mountActs (exec_mounts.go) in its new
// mount namespace, before its chroot: builder code (builder_linux.go's
// contract). On failure it records which act failed (1-based) and returns
// the errno.
//
//go:nosplit
func doMounts(base unsafe.Pointer, pr *procRec) syscall.Errno {
	// pr.mounts is an address inside the block, which starts at base.
	first := unsafe.Add(base, uintptr(pr.mounts)-uintptr(base))
	for i := int64(0); i < pr.nmounts; i++ {
		m := (*mountAct)(unsafe.Add(first, uintptr(i)*unsafe.Sizeof(mountAct{})))
		var e syscall.Errno
		switch m.op {
		case actMkdir:
			_, _, e = syscall.RawSyscall(unix.SYS_MKDIRAT, ^uintptr(99) /* AT_FDCWD */, uintptr(m.a), 0o755)
		case actLike:
			e = createLike(pr, m)
		case actMount:
			_, _, e = syscall.RawSyscall6(unix.SYS_MOUNT, uintptr(m.a), uintptr(m.b), uintptr(m.c), uintptr(m.flags), uintptr(m.d), 0)
		case actSymlink:
			_, _, e = syscall.RawSyscall(unix.SYS_SYMLINKAT, uintptr(m.a), ^uintptr(99), uintptr(m.b))
		}
		if e == syscall.EEXIST && m.op != actMount {
			e = 0
		}
		if e != 0 {
			pr.mountFail = i + 1
			return e
		}
	}
	return 0
}

// createLike makes m.b a directory when m.a is one, else an empty file: a
// bind mount's target must be of its source's kind.
//
//go:nosplit
func createLike(pr *procRec, m *mountAct) syscall.Errno {
	_, _, e := syscall.RawSyscall6(unix.SYS_STATX, ^uintptr(99), uintptr(m.a), 0, unix.STATX_TYPE, uintptr(unsafe.Pointer(&pr.stx)), 0)
	if e != 0 {
		return e
	}
	if pr.stx.Mode&unix.S_IFMT == unix.S_IFDIR {
		_, _, e = syscall.RawSyscall(unix.SYS_MKDIRAT, ^uintptr(99), uintptr(m.b), 0o755)
		return e
	}
	fd, _, e := syscall.RawSyscall6(unix.SYS_OPENAT, ^uintptr(99), uintptr(m.b), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o644, 0, 0)
	if e == 0 {
		syscall.RawSyscall(unix.SYS_CLOSE, fd, 0, 0)
	}
	return e
}
