package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// checkKernel refuses, before any planning, an image that needs what the
// restoring kernel lacks (Options.Features): an image moves between
// machines, and the kernel it was dumped on (Tree.Kernel, Tree.PidMax) may
// have had more. Each refusal names the missing piece and the image's
// kernel.
func checkKernel(tr *pstree.Tree, f Features) error {
	if f.NoSetTID {
		return fmt.Errorf("this kernel has no clone3 with set_tid (Linux 5.5 or later), which places every pid%s: %w", dumpedOn(tr), ErrUnsupported)
	}
	for _, ns := range tr.Namespaces {
		if !ns.Ambient && slices.Contains(f.MissingNS, ns.Kind) {
			return fmt.Errorf("the image has a %s namespace (id %d), which this kernel does not have%s: %w", ns.Kind, ns.ID, dumpedOn(tr), ErrUnsupported)
		}
	}
	if f.PidMax <= 0 {
		return nil
	}
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		ids := [][]int{t.PIDs, t.SIDs, t.PGIDs}
		for _, th := range t.Threads {
			ids = append(ids, th.TIDs)
		}
		for _, v := range ids {
			for l, id := range v {
				if id >= f.PidMax {
					return fmt.Errorf("task %d: id %d at level %d is not below this kernel's pid_max %d%s; raise kernel.pid_max: %w",
						t.PID(), id, l, f.PidMax, dumpedOn(tr), ErrUnsupported)
				}
			}
		}
	}
	return nil
}

// dumpedOn names the kernel an image was dumped on, for error messages.
func dumpedOn(tr *pstree.Tree) string {
	switch {
	case tr.Kernel != "" && tr.PidMax > 0:
		return fmt.Sprintf(" (the image was dumped on Linux %s, pid_max %d)", tr.Kernel, tr.PidMax)
	case tr.Kernel != "":
		return fmt.Sprintf(" (the image was dumped on Linux %s)", tr.Kernel)
	}
	return ""
}
