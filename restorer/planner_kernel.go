package restorer

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

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

// checkCapBnd (from Execute's precheck: the restorer's own capabilities
// are live state, and one without the capabilities a restore needs hears
// that first) refuses a task of the restorer's own user namespace (the
// ambient one) that had a capability outside the restorer's bounding set
// capBnd: no exec, setcap or builder can give it one. The machine the image
// came from allowed more (a container runtime drops some, e.g.
// CAP_SYS_RESOURCE). Tasks of user namespaces the restore creates get a
// full bounding set there and are not limited.
func checkCapBnd(tr *pstree.Tree, capBnd uint64) error {
	if capBnd == 0 {
		return nil
	}
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		u := tr.Namespace(t.NS[pstree.UserNS])
		if u == nil || !u.Ambient {
			continue
		}
		c := &t.Creds
		if missing := (c.CapBnd | c.CapPrm | c.CapEff | c.CapInh | c.CapAmb) &^ capBnd; missing != 0 {
			return fmt.Errorf("task %d had capabilities %s, outside this restorer's bounding set %#x%s: %w",
				t.PID(), capBits(missing), capBnd, dumpedOn(tr), ErrCapability)
		}
	}
	return nil
}

// capBits lists the capability numbers set in v (capabilities(7)).
func capBits(v uint64) string {
	var s []string
	for b := 0; b < 64; b++ {
		if v&(1<<b) != 0 {
			s = append(s, strconv.Itoa(b))
		}
	}
	return strings.Join(s, ", ")
}
