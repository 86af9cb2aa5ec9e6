package sys

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfoChld is the SIGCHLD layout of siginfo_t on 64-bit Linux.
type siginfoChld struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	UID    uint32
	Status int32
}

const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

func unsafeSiginfo(si *unix.Siginfo) unsafe.Pointer { return unsafe.Pointer(si) }
