package restorer

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setCreds gives the builder the exec payload's credentials, in the task's
// final user namespace, in the one order the kernel accepts (builder
// contract: nosplit, raw syscalls, no allocation):
//
//  1. setgroups, setresgid: need CAP_SETGID;
//  2. the inheritable set: capset while the builder still has CAP_SETPCAP,
//     before the bounding drops (a new inheritable cap must be in the
//     bounding set or already inheritable);
//  3. the bounding drops: need CAP_SETPCAP;
//  4. PR_SET_KEEPCAPS when ambient caps are to be raised: a switch from
//     root to non-root ids clears permitted (which ambient needs) unless
//     kept;
//  5. setresuid: needs CAP_SETUID; it clears the ambient set, so
//  6. ambient raises come last (each cap must be permitted and inheritable).
//
// execve then clears keepcaps and computes permitted and effective.
//
//go:nosplit
func setCreds(pr *procRec) syscall.Errno {
	var e syscall.Errno
	if pr.noGroups == 0 {
		if _, _, e = syscall.RawSyscall(unix.SYS_SETGROUPS, uintptr(pr.ngroups), uintptr(pr.groups), 0); e != 0 {
			return e
		}
	}
	if _, _, e = syscall.RawSyscall(unix.SYS_SETRESGID, uintptr(pr.gid[0]), uintptr(pr.gid[1]), uintptr(pr.gid[2])); e != 0 {
		return e
	}
	if pr.setCaps != 0 {
		pr.capHdr[0], pr.capHdr[1] = unix.LINUX_CAPABILITY_VERSION_3, 0
		hdr, data := uintptr(unsafe.Pointer(&pr.capHdr)), uintptr(unsafe.Pointer(&pr.capData))
		if _, _, e = syscall.RawSyscall(unix.SYS_CAPGET, hdr, data, 0); e != 0 {
			return e
		}
		pr.capData[2], pr.capData[5] = uint32(pr.capInh), uint32(pr.capInh>>32)
		if _, _, e = syscall.RawSyscall(unix.SYS_CAPSET, hdr, data, 0); e != 0 {
			return e
		}
		for c := uintptr(0); c <= uintptr(pr.capLast); c++ {
			if pr.capBnd&(1<<c) == 0 {
				if _, _, e = syscall.RawSyscall6(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0, 0, 0, 0); e != 0 {
					return e
				}
			}
		}
		if pr.keepCaps != 0 {
			if _, _, e = syscall.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0, 0, 0, 0); e != 0 {
				return e
			}
		}
	}
	if _, _, e = syscall.RawSyscall(unix.SYS_SETRESUID, uintptr(pr.uid[0]), uintptr(pr.uid[1]), uintptr(pr.uid[2])); e != 0 {
		return e
	}
	if pr.setCaps != 0 {
		for c := uintptr(0); c <= uintptr(pr.capLast); c++ {
			if pr.capAmb&(1<<c) != 0 {
				if _, _, e = syscall.RawSyscall6(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, c, 0, 0, 0); e != 0 {
					return e
				}
			}
		}
	}
	return 0
}
