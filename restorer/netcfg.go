package restorer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Net namespace contents. After verification every process exists, so
// every restored net namespace exists; the Go restorer (root in the
// initial user namespace) configures each one from outside, through an
// rtnetlink socket it creates inside (rtnl.go), one OpNetConfig step per
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
	path := func(p int) string { return fmt.Sprintf("/proc/%d/ns/net", t.p.Procs[p].PIDs[0]) }
	// member of each net namespace configured in this plan
	member := map[pstree.NSID]int{}
	order := map[pstree.NSID]int{}
	for i, st := range t.p.Steps {
		if st.Op == OpNetConfig {
			member[st.NS[pstree.NetNS]] = st.Target
			order[st.NS[pstree.NetNS]] = i
		}
	}
	r, err := rtnlIn(path(s.Target))
	if err != nil {
		return fmt.Errorf("net namespace %d: %w", ns.ID, err)
	}
	defer r.close()
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
		if err := r.createVeth(l, *pl, path(member[peer.ID])); err != nil {
			return fmt.Errorf("net namespace %d: create veth %q (peer %q in namespace %d): %w", ns.ID, l.Name, l.PeerName, peer.ID, err)
		}
	}
	for _, l := range ns.Links {
		idx, err := r.linkIndex(l.Name)
		if err != nil {
			return fmt.Errorf("net namespace %d: %w", ns.ID, err)
		}
		if l.Kind != pstree.LinkLoopback {
			// The image lists every address, IPv6 link-local ones
			// included: the kernel must not invent its own when the link
			// goes up (it would, asynchronously).
			if err := r.noAddrGen(idx); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) && !errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("net namespace %d: addrgenmode none on %q: %w", ns.ID, l.Name, err)
			}
		}
		if l.Up {
			if err := r.do(newMsg(unix.RTM_NEWLINK, 0, ifinfo(idx, unix.IFF_UP, unix.IFF_UP)), nil); err != nil {
				return fmt.Errorf("net namespace %d: set %q up: %w", ns.ID, l.Name, err)
			}
		}
		for _, a := range l.Addrs {
			if err := r.addAddr(idx, a); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("net namespace %d: address %v on %q: %w", ns.ID, a, l.Name, err)
			}
		}
	}
	for _, rt := range ns.Routes {
		if err := r.addRoute(rt); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("net namespace %d: route %v via %v dev %q: %w", ns.ID, rt.Dst, rt.Gateway, rt.Dev, err)
		}
	}
	return nil
}

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h).
const in6AddrGenModeNone = 1

// noAddrGen turns IPv6 address generation off on link idx.
func (r *rtnl) noAddrGen(idx int32) error {
	m := newMsg(unix.RTM_NEWLINK, 0, ifinfo(idx, 0, 0))
	endSpec := m.nest(unix.IFLA_AF_SPEC)
	endInet6 := m.nest(unix.AF_INET6)
	m.attr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{in6AddrGenModeNone})
	endInet6()
	endSpec()
	return r.do(m, nil)
}

func linkPos(ns *pstree.Namespace, name string) int {
	for i := range ns.Links {
		if ns.Links[i].Name == name {
			return i
		}
	}
	return -1
}

// createVeth creates veth l here with its peer p in the namespace at
// peerPath.
func (r *rtnl) createVeth(l, p pstree.NetLink, peerPath string) error {
	pf, err := openRO(peerPath)
	if err != nil {
		return err
	}
	defer unix.Close(pf)
	m := newMsg(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifinfo(0, 0, 0))
	linkAttrs(m, l)
	end := m.nest(unix.IFLA_LINKINFO)
	m.str(unix.IFLA_INFO_KIND, "veth")
	endData := m.nest(unix.IFLA_INFO_DATA)
	endPeer := m.nest(vethInfoPeer)
	m.b = append(m.b, ifinfo(0, 0, 0)...)
	linkAttrs(m, p)
	m.u32(unix.IFLA_NET_NS_FD, uint32(pf))
	endPeer()
	endData()
	end()
	return r.do(m, nil)
}

func linkAttrs(m *msg, l pstree.NetLink) {
	m.str(unix.IFLA_IFNAME, l.Name)
	if len(l.MAC) > 0 {
		m.attr(unix.IFLA_ADDRESS, l.MAC)
	}
	if l.MTU > 0 {
		m.u32(unix.IFLA_MTU, uint32(l.MTU))
	}
}

func openRO(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// addAddr adds address a to link idx, with the scope the kernel gives
// such addresses (host for loopback, link for link-local); IPv6 ones
// without duplicate address detection, so they work at once.
func (r *rtnl) addAddr(idx int32, a netip.Prefix) error {
	ip := a.Addr()
	fixed := make([]byte, unix.SizeofIfAddrmsg)
	fixed[0], fixed[1] = family(ip), uint8(a.Bits())
	switch {
	case ip.IsLoopback():
		fixed[3] = unix.RT_SCOPE_HOST
	case ip.IsLinkLocalUnicast():
		fixed[3] = unix.RT_SCOPE_LINK
	}
	if ip.Is6() {
		fixed[2] = unix.IFA_F_NODAD
	}
	binary.NativeEndian.PutUint32(fixed[4:], uint32(idx))
	m := newMsg(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, fixed)
	m.attr(unix.IFA_LOCAL, ip.AsSlice())
	m.attr(unix.IFA_ADDRESS, ip.AsSlice())
	return r.do(m, nil)
}

// addRoute adds a default or static route as the dump recorded it.
func (r *rtnl) addRoute(rt pstree.NetRoute) error {
	fixed := make([]byte, unix.SizeofRtMsg)
	fixed[0], fixed[1] = family(rt.Dst.Addr()), uint8(rt.Dst.Bits())
	fixed[4] = uint8(unix.RT_TABLE_MAIN)
	if rt.Table < 256 && rt.Table != 0 {
		fixed[4] = uint8(rt.Table)
	}
	fixed[5], fixed[6], fixed[7] = rt.Protocol, rt.Scope, rt.Type
	m := newMsg(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, fixed)
	if rt.Dst.Bits() > 0 {
		m.attr(unix.RTA_DST, rt.Dst.Addr().AsSlice())
	}
	if rt.Gateway.IsValid() {
		m.attr(unix.RTA_GATEWAY, rt.Gateway.AsSlice())
	}
	if rt.Src.IsValid() {
		m.attr(unix.RTA_PREFSRC, rt.Src.AsSlice())
	}
	if rt.Dev != "" {
		idx, err := r.linkIndex(rt.Dev)
		if err != nil {
			return err
		}
		m.u32(unix.RTA_OIF, uint32(idx))
	}
	if rt.Table >= 256 {
		m.u32(unix.RTA_TABLE, rt.Table)
	}
	if rt.Metric != 0 {
		m.u32(unix.RTA_PRIORITY, rt.Metric)
	}
	return r.do(m, nil)
}
