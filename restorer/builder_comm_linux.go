package restorer

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setName gives the calling thread its recorded command name (exec_comm.go); an
// all-zero record (name not in the image) keeps the restorer's. Builder
// code: nosplit, raw syscall only.
//
//go:nosplit
func setName(c *[commLen + 1]byte) {
	if c[0] != 0 {
		syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NAME, uintptr(unsafe.Pointer(c)), 0)
	}
}

// nameThread is a new thread's first act: take its name, then let its
// creator go on (waitNamed), so that no later step - the restorer's
// SIGSTOP of a stopped payload - can find it still unnamed.
//
//go:nosplit
func nameThread(st *stepRec) {
	setName(&st.comm)
	atomic.StoreUint32(&st.named, 1)
	syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&st.named)), futexWake, 1, 0, 0, 0)
}

// waitNamed is the creator's side of nameThread, after the clone.
//
//go:nosplit
func waitNamed(st *stepRec) {
	for atomic.LoadUint32(&st.named) == 0 {
		syscall.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&st.named)), futexWait, 0, 0, 0, 0)
	}
}
