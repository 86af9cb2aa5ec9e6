package restorer

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// What a restored program gets as stdin, stdout and stderr.
//
// Builders share the restorer's fd table (CLONE_FILES) until they exec,
// so by default a restored program starts with the restorer's fds 0, 1
// and 2: right for `nsinit restore` in the foreground, wrong for a detached
// one, whose restored tree would keep the caller's pipe open (a shell's
// `pid=$(nsinit restore -d ...)` would never see end of file). With
// ExecOptions.Stdio, each builder with a program to exec dups the given
// files onto 0, 1, 2 of a private copy of the table in prepareExec, while
// it still holds the token, so when the restore commits no restored
// program refers to the restorer's stdio any more.

// setStdio records the fds of stdio in every proc of the block; a nil
// entry keeps the restorer's.
func setStdio(b *block, stdio [3]*os.File) {
	if stdio == [3]*os.File{} {
		return
	}
	for i := 0; i < b.nprocs; i++ {
		r := procAt(b.base, b.procsOff, int64(i))
		r.setStdio = 1
		for k, f := range stdio {
			r.stdio[k] = -1
			if f != nil {
				r.stdio[k] = int32(f.Fd())
			}
		}
	}
}

// dupStdio puts the recorded fds on 0, 1, 2 of the builder's (already
// private) fd table; dup3 clears their close-on-exec flag.
//
// Runs in a builder: no allocation, no locks, no Go calls.
//
//go:nosplit
func dupStdio(pr *procRec) syscall.Errno {
	for k := 0; k < 3; k++ {
		if fd := pr.stdio[k]; fd >= 0 && fd != int32(k) {
			if _, _, e := syscall.RawSyscall(unix.SYS_DUP3, uintptr(fd), uintptr(k), 0); e != 0 {
				return e
			}
		}
	}
	return 0
}
