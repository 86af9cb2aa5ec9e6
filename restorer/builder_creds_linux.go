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
//  6. for a zombie or a stopped payload (no exec follows) permitted and
//     effective as the image has them, within what the builder kept, and
//     PR_SET_KEEPCAPS off again;
//  7. ambient raises come last (each cap must be permitted and inheritable).
//
// A uid change leaves the mm - shared by every builder and the restorer
// until the exec - non-dumpable: on purpose, until the builder has left it
// (passOrLeave). execve then clears keepcaps and computes permitted and
// effective.
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
	if pr.capExact != 0 {
		hdr, data := uintptr(unsafe.Pointer(&pr.capHdr)), uintptr(unsafe.Pointer(&pr.capData))
		if _, _, e = syscall.RawSyscall(unix.SYS_CAPGET, hdr, data, 0); e != 0 {
			return e
		}
		d := &pr.capData // {effective, permitted, inheritable} low, then high halves
		d[0], d[3] = uint32(pr.capEff)&d[1], uint32(pr.capEff>>32)&d[4]
		d[1], d[4] = uint32(pr.capPrm)&d[1], uint32(pr.capPrm>>32)&d[4]
		if _, _, e = syscall.RawSyscall(unix.SYS_CAPSET, hdr, data, 0); e != 0 {
			return e
		}
		if pr.keepCaps != 0 { // no exec clears it: a parked task keeps no trace
			if _, _, e = syscall.RawSyscall6(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0, 0, 0, 0, 0); e != 0 {
				return e
			}
		}
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

// exitCreds gives a zombie's builder (step i, OpExit) its image
// credentials before it dies; on failure the restore fails and it parks.
//
//go:nosplit
func exitCreds(base unsafe.Pointer, pr *procRec, i int64) {
	if pr.setCreds == 0 {
		return
	}
	if e := setCreds(pr); e != 0 {
		fail(base, i, uintptr(e))
		park(base)
	}
}
