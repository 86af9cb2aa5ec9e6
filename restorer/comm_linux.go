package restorer

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setName gives the calling thread its recorded command name (comm.go); an
// all-zero record (name not in the image) keeps the restorer's. Builder
// code: nosplit, raw syscall only.
//
//go:nosplit
func setName(c *[commLen + 1]byte) {
	if c[0] != 0 {
		syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NAME, uintptr(unsafe.Pointer(c)), 0)
	}
}
