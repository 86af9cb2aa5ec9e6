// Package waiter is the payload restore gives a task that was waiting for
// its children (pstree.Task.WaitsForChildren): a shell at `wait`,
// `unshare -f`, any launcher. Running its program again from the start
// would launch its children a second time; instead the task execs the
// nsinit binary with its own argv and environment (so /proc shows its
// command line and environment as before) and, marked by an fd the
// restorer leaves open at FD, only waits: it reaps its children (and, as
// a namespace's PID 1, orphans) until none is left and exits with the
// last one's status, as a shell's `wait` or `unshare -f` would.
//
// The marked nsinit never starts the Go runtime, whose threads would show
// in /proc and take pids: its assembly entry point (internal/earlyinit/rt0_amd64.s)
// reads the mark and runs the same loop as Run. Run is the fallback for a
// binary built without that entry point.
package waiter

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// FD is the descriptor number of the mark. Magic is what the mark's first
// 8 bytes hold (little-endian), "nsinitW" and a version byte.
const (
	FD    = 63
	Magic = uint64('n') | uint64('s')<<8 | uint64('i')<<16 | uint64('n')<<24 |
		uint64('i')<<32 | uint64('t')<<40 | uint64('W')<<48 | uint64(1)<<56
)

// NewMark makes the mark: a close-on-exec memfd holding Magic. The restorer
// makes one per restore; each waiting task's builder dups it to FD.
func NewMark() (int, error) {
	fd, err := unix.MemfdCreate("nsinit-waiter", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, err
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], Magic)
	if _, err := unix.Pwrite(fd, b[:], 0); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Marked says whether this process was started as a waiter.
func Marked() bool {
	var b [8]byte
	n, err := unix.Pread(FD, b[:], 0)
	return err == nil && n == 8 && binary.LittleEndian.Uint64(b[:]) == Magic
}

// Run is the waiter's loop in Go: close the mark, reap every child until
// none is left, exit with the last status (128+N for a death by signal N).
func Run() {
	unix.Close(FD)
	code := 0
	for {
		var ws unix.WaitStatus
		_, err := unix.Wait4(-1, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Exit(code)
		}
		code = ExitCode(uint32(ws))
	}
}

// ExitCode is the exit status a shell reports for a raw wait status.
func ExitCode(ws uint32) int {
	if sig := ws & 0x7f; sig != 0 {
		return 128 + int(sig)
	}
	return int(ws>>8) & 0xff
}
