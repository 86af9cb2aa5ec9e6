package restorer

import (
	"errors"
	"fmt"

	"github.com/nsinit/nsinit/internal/rtnl"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Net namespace contents. After verification every process exists, so
// every restored net namespace exists; the Go restorer (root in the
// initial user namespace) configures each one from outside, through an
// rtnetlink socket it creates inside (internal/rtnl), one OpNetConfig step per
// namespace, in image order:
//
//  1. veth pairs whose first end (in image order) is in this namespace are
//     created here, the peer end moved into its namespace at creation
//     (IFLA_NET_NS_FD), both with their names, MACs and MTUs;
//  2. every interface of the namespace that was up is set up (loopback
//     included), and gets its addresses;
//  3. routes (default and static ones; the kernel's own come back with the
//     addresses).
//
// Peers are named by image namespace id, never by ifindex.

// netConfig performs an OpNetConfig step.
func (t *tx) netConfig(s *Step) error {
	tr := t.p.Tree
	ns := tr.Namespace(s.NS[pstree.NetNS])
	path := func(p int) string { return fmt.Sprintf("/proc/%d/ns/net", t.hostPID(p)) }
	// member of each net namespace configured in this plan
	member := map[pstree.NSID]int{}
	order := map[pstree.NSID]int{}
	for i, st := range t.p.Steps {
		if st.Op == OpNetConfig {
			member[st.NS[pstree.NetNS]] = st.Target
			order[st.NS[pstree.NetNS]] = i
		}
	}
	r, err := rtnl.OpenPath(path(s.Target))
	if err != nil {
		return fmt.Errorf("net namespace %d: %w", ns.ID, err)
	}
	defer r.Close()
	for li, l := range ns.Links {
		if l.Kind != pstree.LinkVeth {
			continue
		}
		// The pair is created from the end that comes first: the earlier
		// namespace, or the earlier link of this one.
		if po := order[l.PeerNS]; po < order[ns.ID] || (l.PeerNS == ns.ID && ns.Link(l.PeerName) != nil && linkPos(ns, l.PeerName) < li) {
			continue
		}
		peer := tr.Namespace(l.PeerNS)
		pl := peer.Link(l.PeerName)
		if pl == nil {
			return fmt.Errorf("net namespace %d: veth %q: peer %q missing in namespace %d: %w", ns.ID, l.Name, l.PeerName, peer.ID, ErrBadImage)
		}
		if err := r.CreateVeth(l, *pl, path(member[peer.ID])); err != nil {
			return fmt.Errorf("net namespace %d: create veth %q (peer %q in namespace %d): %w", ns.ID, l.Name, l.PeerName, peer.ID, err)
		}
	}
	for _, l := range ns.Links {
		idx, err := r.LinkIndex(l.Name)
		if err != nil {
			return fmt.Errorf("net namespace %d: %w", ns.ID, err)
		}
		if l.Kind != pstree.LinkLoopback {
			// The image lists every address, IPv6 link-local ones
			// included: the kernel must not invent its own when the link
			// goes up (it would, asynchronously).
			if err := r.NoAddrGen(idx); err != nil {
				return fmt.Errorf("net namespace %d: addrgenmode none on %q: %w", ns.ID, l.Name, err)
			}
		}
		if l.Up {
			if err := r.SetUp(idx); err != nil {
				return fmt.Errorf("net namespace %d: set %q up: %w", ns.ID, l.Name, err)
			}
		}
		for _, a := range l.Addrs {
			if err := r.AddAddr(idx, a); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("net namespace %d: address %v on %q: %w", ns.ID, a, l.Name, err)
			}
		}
	}
	for _, rt := range ns.Routes {
		if err := r.AddRoute(rt); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("net namespace %d: route %v via %v dev %q: %w", ns.ID, rt.Dst, rt.Gateway, rt.Dev, err)
		}
	}
	return nil
}

func linkPos(ns *pstree.Namespace, name string) int {
	for i := range ns.Links {
		if ns.Links[i].Name == name {
			return i
		}
	}
	return -1
}
