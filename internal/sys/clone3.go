package sys

import (
	"errors"
	"fmt"
	"unsafe"
)

// MaxSetTID is the kernel's limit on set_tid entries (MAX_PID_NS_LEVEL).
const MaxSetTID = 32

// Clone flags clone3 accepts that x/sys/unix spells elsewhere.
const (
	CLONE_VM             = 0x00000100
	CLONE_FS             = 0x00000200
	CLONE_FILES          = 0x00000400
	CLONE_SIGHAND        = 0x00000800
	CLONE_PIDFD          = 0x00001000
	CLONE_PARENT         = 0x00008000
	CLONE_THREAD         = 0x00010000
	CLONE_SYSVSEM        = 0x00040000
	CLONE_CHILD_CLEARTID = 0x00200000
	CLONE_NEWPID         = 0x20000000
)

// CloneArgs is struct clone_args (CLONE_ARGS_SIZE_VER2, 88 bytes). Every
// field is a plain integer so the block holding it can live in memory that
// Go's garbage collector never scans (see restorer's builder).
type CloneArgs struct {
	Flags      uint64
	PidFD      uint64 // address of an int32 that receives the pidfd
	ChildTID   uint64 // address cleared + futex-woken on exec/exit (CLONE_CHILD_CLEARTID)
	ParentTID  uint64
	ExitSignal uint64
	Stack      uint64 // lowest address of the child's stack
	StackSize  uint64
	TLS        uint64
	SetTID     uint64 // address of SetTIDSize pid_t (int32!) pids, innermost first
	SetTIDSize uint64
	Cgroup     uint64
}

// CloneArgsSize is sizeof(struct clone_args) that clone3 is told.
const CloneArgsSize = unsafe.Sizeof(CloneArgs{})

// ErrBadPIDs reports a pid vector clone3 would refuse anyway.
var ErrBadPIDs = errors.New("invalid pid vector")

// SetTID converts pids, OUTERMOST first as in NSpid, into clone3's set_tid
// order (innermost first), writing into dst (which must hold len(pids)).
// The kernel reads set_tid as an array of pid_t, 32-bit entries
// (copy_from_user of set_tid_size * sizeof(pid_t)), not of u64 like the
// other clone_args fields: an array of uint64 happens to work for ONE entry
// on little-endian machines and fails with EINVAL for two or more (the
// second entry reads as 0). That is what an earlier version of this code
// took for a kernel limit.
// A 0 entry means "let the kernel choose" and is allowed only as a prefix
// (outer levels): set_tid can only leave the outermost levels unset. It
// returns the number of entries to pass as set_tid_size.
func SetTID(dst []int32, pids []int) (int, error) {
	n := 0
	for i, p := range pids {
		switch {
		case p < 0 || p > 1<<30:
			return 0, fmt.Errorf("pid %d at level %d: %w", p, i, ErrBadPIDs)
		case p == 0 && n > 0:
			return 0, fmt.Errorf("unset pid at level %d below a set level: %w", i, ErrBadPIDs)
		case p > 0:
			n++
		}
	}
	if n > MaxSetTID {
		return 0, fmt.Errorf("%d set_tid levels, kernel limit %d: %w", n, MaxSetTID, ErrBadPIDs)
	}
	if len(dst) < n {
		return 0, fmt.Errorf("set_tid buffer of %d for %d pids: %w", len(dst), n, ErrBadPIDs)
	}
	for i := 0; i < n; i++ {
		dst[i] = int32(pids[len(pids)-1-i])
	}
	return n, nil
}
