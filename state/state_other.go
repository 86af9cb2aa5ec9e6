//go:build !amd64

package state

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// Recording and restoring state drive tasks with ptrace and inject system
// calls with x86-64 code and register sets (inject_amd64.go); other
// architectures refuse them, and dump and restore without --state work
// there as everywhere.

var errArch = fmt.Errorf("%w: task state is recorded and restored on x86-64 only", ErrUnsupported)

// Record refuses: see above.
func Record(dir, proc string, tr *pstree.Tree, onTracer func(func()), signals Signals) error {
	return errArch
}

// Check refuses: see above.
func Check(dir string, tr *pstree.Tree) error { return errArch }

// Restore refuses: see above.
func Restore(dir string, tr *pstree.Tree, o Options) error { return errArch }
