package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// netMember is a proc in net namespace id that the restorer can reach by
// its level-0 pid, or -1.
func (pl *planner) netMember(id pstree.NSID) int {
	for p := range pl.m.procs {
		if q := &pl.m.procs[p]; q.state == mAlive && q.nsk[pstree.NetNS] == id && pl.plan.Procs[p].PIDs[0] != 0 {
			return p
		}
	}
	return -1
}

// netConfig emits one OpNetConfig per non-ambient net namespace with
// contents to restore.
func (pl *planner) netConfig() error {
	tr := pl.tr()
	for _, ns := range tr.Namespaces {
		if ns.Kind != pstree.NetNS || ns.Ambient || len(ns.Links) == 0 && len(ns.Routes) == 0 {
			continue
		}
		via := pl.netMember(ns.ID)
		if via < 0 {
			return fmt.Errorf("net namespace %d: no live member to configure it through: %w", ns.ID, ErrUnsupported)
		}
		for _, l := range ns.Links {
			switch {
			case l.Kind == pstree.LinkOther:
				return fmt.Errorf("net namespace %d: interface %q (%s) cannot be re-created: %w", ns.ID, l.Name, l.KindName, ErrUnsupported)
			case l.Kind == pstree.LinkVeth:
				peer := tr.Namespace(l.PeerNS)
				if peer == nil || peer.Kind != pstree.NetNS || peer.Ambient || pl.netMember(peer.ID) < 0 {
					return fmt.Errorf("net namespace %d: veth %q: its peer's namespace %d is not one the restore creates: %w", ns.ID, l.Name, l.PeerNS, ErrUnsupported)
				}
			}
		}
		s := Step{Op: OpNetConfig, Actor: Restorer, Target: via}
		s.NS[pstree.NetNS] = ns.ID
		if err := pl.emit(s); err != nil {
			return err
		}
	}
	return nil
}
