package dump

import (
	"fmt"

	"github.com/nsinit/nsinit/internal/nscursor"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// probeCursors fills in LastPID for every pid namespace of tr that the
// dump could not read from where it runs (all but its own), with a probe
// forked into each. A namespace whose init is dead accepts no fork: its
// cursor stays 0 (unknown), as does any other that cannot be probed.
func probeCursors(tr *pstree.Tree, o Options) {
	proc := o.Proc
	if proc == "" {
		proc = "/proc"
	}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		if ns.Kind != pstree.PidNS || ns.LastPID != 0 {
			continue
		}
		for _, t := range tr.Tasks {
			if t.NS[pstree.PidNS] != ns.ID {
				continue
			}
			fd, err := unix.Open(fmt.Sprintf("%s/%d/ns/pid", proc, t.PIDs[0]), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				continue
			}
			last, err := nscursor.Read(fd)
			unix.Close(fd)
			if err != nil {
				o.logf("pid namespace of pid %d: ns_last_pid unknown: %v", t.PIDs[0], err)
			} else {
				ns.LastPID = last
			}
			break
		}
	}
}
