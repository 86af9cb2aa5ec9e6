package pstree

import (
	"fmt"
	"net"
	"net/netip"
)

// LinkKind is what a restore needs to know about a network interface to
// re-create it.
type LinkKind int

// Link kinds. LinkOther (the zero value) is anything restore cannot create
// (bridge, tun, macvlan, a physical device ...): a dump refuses it.
const (
	LinkOther LinkKind = iota
	LinkLoopback
	LinkVeth
)

func (k LinkKind) String() string {
	switch k {
	case LinkOther:
		return "other"
	case LinkLoopback:
		return "loopback"
	case LinkVeth:
		return "veth"
	}
	return fmt.Sprintf("linkkind(%d)", int(k))
}

// NetLink is one network interface of a net namespace.
type NetLink struct {
	Name string
	Kind LinkKind
	// KindName is the kernel's name of the kind (IFLA_INFO_KIND: "veth",
	// "bridge", ...), "" when the device has none (loopback, physical).
	KindName string
	Up       bool // IFF_UP: administratively up
	MTU      int
	MAC      net.HardwareAddr
	// Addrs are the interface's addresses with their prefix length (the
	// address itself is not masked: 10.0.0.1/24).
	Addrs []netip.Prefix
	// PeerNS and PeerName name a veth's other end: the image id of its net
	// namespace (this one when both ends are here) and its interface name.
	// PeerNS is 0 when the peer is in a namespace the tree does not use.
	PeerNS   NSID
	PeerName string
}

// NetRoute is one route the kernel did not generate by itself (not
// protocol "kernel", not the local table): default and static routes.
type NetRoute struct {
	// Dst is the destination; a default route has a zero-bit prefix
	// (0.0.0.0/0 or ::/0).
	Dst     netip.Prefix
	Gateway netip.Addr // invalid when the route has no gateway
	Src     netip.Addr // preferred source (RTA_PREFSRC), invalid when unset
	Dev     string     // output interface, "" when none
	Table   uint32
	// Protocol, Scope and Type are rtmsg's rtm_protocol, rtm_scope and
	// rtm_type, as the kernel numbers them.
	Protocol, Scope, Type uint8
	Metric                uint32 // RTA_PRIORITY
}

// Link returns the interface of net namespace ns with the given name, or
// nil.
func (ns *Namespace) Link(name string) *NetLink {
	for i := range ns.Links {
		if ns.Links[i].Name == name {
			return &ns.Links[i]
		}
	}
	return nil
}

// MapUID translates a uid as the dumper sees it (Task.Creds) into the
// user namespace ns through its uid_map; ok is false when it is unmapped
// there (the task would see the overflow uid).
func (ns *Namespace) MapUID(outside uint32) (inside uint32, ok bool) {
	return mapID(ns.UIDMap, outside)
}

// MapGID is MapUID for gids.
func (ns *Namespace) MapGID(outside uint32) (inside uint32, ok bool) {
	return mapID(ns.GIDMap, outside)
}

func mapID(m []IDMapEntry, outside uint32) (uint32, bool) {
	for _, e := range m {
		if outside >= e.Outside && uint64(outside) < uint64(e.Outside)+uint64(e.Count) {
			return e.Inside + (outside - e.Outside), true
		}
	}
	return 0, false
}
