//go:build !amd64

package restorer

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// clone3 has no trampoline here: a clone that runs the builder on a stack
// of its own is written in assembly for amd64 only (trampoline_amd64.s).
func clone3(args uintptr, size uintptr, arg uintptr) (r1 uintptr, errno uintptr) {
	return 0, uintptr(unix.ENOSYS)
}

// ArchSupported refuses: restore needs the builders' clone trampoline.
// Planning (restore --dry-run), dump, show, check and the init work.
func ArchSupported() error { return archError{} }

// archError is ErrUnsupported with its own words.
type archError struct{}

func (archError) Error() string {
	return fmt.Sprintf("restore is not available on %s: the builders' clone trampoline (restorer/trampoline_amd64.s) is written for amd64 only", runtime.GOARCH)
}

func (archError) Is(target error) bool { return target == ErrUnsupported }
