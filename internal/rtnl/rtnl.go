// Package rtnl is nsinit's one rtnetlink client, built on
// vishvananda/netlink (what runc and podman use): dump reads a net
// namespace's interfaces, addresses and routes through it, restore
// re-creates them. It speaks pstree's types; what the image keeps (which
// routes, which devices) is dump's decision, not this package's.
//
// A NETLINK_ROUTE socket belongs to the net namespace it was created in,
// so a Client's socket is created inside its namespace (internal/nsthread)
// and used from the caller's own namespace afterwards.
package rtnl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/nsinit/nsinit/internal/nsthread"
	"github.com/nsinit/nsinit/pstree"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Client talks to one net namespace.
type Client struct{ h *netlink.Handle }

// ErrInterrupted is wrapped when a listing changed while it was read (the
// kernel's NLM_F_DUMP_INTR): read again.
var ErrInterrupted = netlink.ErrDumpInterrupted

// Open returns a client of net namespace nsfd (a /proc/PID/ns/net file).
func Open(nsfd int) (*Client, error) {
	var h *netlink.Handle
	err := nsthread.In(nsfd, unix.CLONE_NEWNET, func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &Client{h: h}, nil
}

// OpenPath opens the client of the net namespace file at path.
func OpenPath(path string) (*Client, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer h.Close()
	c, err := Open(int(h))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Close releases the socket.
func (c *Client) Close() { c.h.Close() }

// Link is an interface as read, with what finding a veth's peer needs.
type Link struct {
	pstree.NetLink
	Index int
	// PeerIndex is a veth peer's ifindex (IFLA_LINK), in the namespace
	// PeerNSID names, or in this one when PeerNSID is -1.
	PeerIndex, PeerNSID int
}

// Links lists the namespace's interfaces with their addresses.
func (c *Client) Links() ([]Link, error) {
	nls, err := c.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	ls := make([]Link, 0, len(nls))
	byIndex := map[int]int{}
	for _, nl := range nls {
		a := nl.Attrs()
		l := Link{Index: a.Index, PeerIndex: a.ParentIndex, PeerNSID: a.NetNsID}
		l.Name, l.MTU, l.Up = a.Name, a.MTU, a.Flags&net.FlagUp != 0
		if len(a.HardwareAddr) > 0 {
			l.MAC = append(net.HardwareAddr(nil), a.HardwareAddr...)
		}
		if _, plain := nl.(*netlink.Device); !plain {
			l.KindName = nl.Type() // IFLA_INFO_KIND
		}
		switch {
		case a.EncapType == "loopback" && l.KindName == "":
			l.Kind = pstree.LinkLoopback
			l.MAC = nil // all zeroes, and not settable
		case l.KindName == "veth":
			l.Kind = pstree.LinkVeth
		}
		byIndex[l.Index] = len(ls)
		ls = append(ls, l)
	}
	addrs, err := c.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		i, ok := byIndex[a.LinkIndex]
		if !ok || a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP) // 4 bytes for IPv4 (IFA_LOCAL)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		ls[i].Addrs = append(ls[i].Addrs, netip.PrefixFrom(ip, bits))
	}
	return ls, nil
}

// Route is a route as read: OIF is its output interface's index (0:
// none).
type Route struct {
	pstree.NetRoute
	OIF int
}

// Routes lists the routes of every table and family, but cached clones.
func (c *Client) Routes() ([]Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC}
	nrs, err := c.h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []Route
	for _, nr := range nrs {
		if nr.Family != unix.AF_INET && nr.Family != unix.AF_INET6 || nr.Dst == nil {
			continue // MPLS and the like: not restored
		}
		r := Route{OIF: nr.LinkIndex}
		dst, ok := netip.AddrFromSlice(nr.Dst.IP)
		if !ok {
			return nil, fmt.Errorf("route with a %d-byte destination", len(nr.Dst.IP))
		}
		if nr.Family == unix.AF_INET {
			dst = dst.Unmap()
		}
		bits, _ := nr.Dst.Mask.Size()
		if bits > dst.BitLen() {
			return nil, fmt.Errorf("route to %v/%d: prefix too long", dst, bits)
		}
		r.Dst = netip.PrefixFrom(dst, bits)
		r.Gateway = addr(nr.Gw, nr.Family)
		r.Src = addr(nr.Src, nr.Family)
		r.Table, r.Protocol, r.Scope, r.Type = uint32(nr.Table), uint8(nr.Protocol), uint8(nr.Scope), uint8(nr.Type)
		r.Metric = uint32(nr.Priority)
		out = append(out, r)
	}
	return out, nil
}

// addr converts ip (nil: none) in family's form.
func addr(ip net.IP, family int) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	if family == unix.AF_INET {
		return a.Unmap()
	}
	return a
}

// NSID is the id this namespace gives net namespace fd, -1 for none.
func (c *Client) NSID(fd int) (int, error) {
	return c.h.GetNetNsIdByFd(fd)
}

// LinkIndex is the ifindex of interface name.
func (c *Client) LinkIndex(name string) (int, error) {
	l, err := c.h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %q: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// byIndex names a link by its index alone, as the requests below need.
func byIndex(idx int) netlink.Link {
	return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: idx}}
}

// CreateVeth creates veth l here with its peer p in the net namespace
// file at peerPath, both with their names, MACs and MTUs (queue lengths:
// the kernel's).
func (c *Client) CreateVeth(l, p pstree.NetLink, peerPath string) error {
	peer, err := netns.GetFromPath(peerPath)
	if err != nil {
		return fmt.Errorf("open %s: %w", peerPath, err)
	}
	defer peer.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.HardwareAddr, attrs.MTU = l.Name, l.MAC, l.MTU
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: p.Name, PeerHardwareAddr: p.MAC,
		PeerNamespace: netlink.NsFd(peer), PeerTxQLen: -1, PeerMTU: uint32(p.MTU)}
	return c.h.LinkAdd(v)
}

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE (linux/if_link.h).
const in6AddrGenModeNone = 1

// NoAddrGen turns IPv6 address generation off on link idx: the image
// lists every address, link-local ones included, and the kernel must not
// invent its own when the link goes up. A kernel or link without IPv6
// says EAFNOSUPPORT or EOPNOTSUPP, which is not an error here.
func (c *Client) NoAddrGen(idx int) error {
	err := c.h.LinkSetIP6AddrGenMode(byIndex(idx), in6AddrGenModeNone)
	if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// SetUp sets link idx up.
func (c *Client) SetUp(idx int) error { return c.h.LinkSetUp(byIndex(idx)) }

// AddAddr adds address a to link idx, with the scope the kernel gives
// such addresses (host for loopback, link for link-local), no broadcast
// address (the image has none), IPv6 ones without duplicate address
// detection so that they work at once.
func (c *Client) AddAddr(idx int, a netip.Prefix) error {
	ip := a.Addr()
	na := &netlink.Addr{
		IPNet:     &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(a.Bits(), ip.BitLen())},
		Broadcast: net.IPv4zero, // "none" to the library, which would compute one
	}
	switch {
	case ip.IsLoopback():
		na.Scope = unix.RT_SCOPE_HOST
	case ip.IsLinkLocalUnicast():
		na.Scope = unix.RT_SCOPE_LINK
	}
	if ip.Is6() {
		na.Flags = unix.IFA_F_NODAD
	}
	return c.h.AddrAdd(byIndex(idx), na)
}

// AddRoute adds a route as the dump recorded it.
func (c *Client) AddRoute(rt pstree.NetRoute) error {
	dst := rt.Dst.Addr()
	nr := &netlink.Route{
		Dst:      &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(rt.Dst.Bits(), dst.BitLen())},
		Table:    int(rt.Table),
		Protocol: netlink.RouteProtocol(rt.Protocol),
		Scope:    netlink.Scope(rt.Scope),
		Type:     int(rt.Type),
		Priority: int(rt.Metric),
	}
	if nr.Table == 0 {
		nr.Table = unix.RT_TABLE_MAIN
	}
	if rt.Gateway.IsValid() {
		nr.Gw = rt.Gateway.AsSlice()
	}
	if rt.Src.IsValid() {
		nr.Src = rt.Src.AsSlice()
	}
	if rt.Dev != "" {
		idx, err := c.LinkIndex(rt.Dev)
		if err != nil {
			return err
		}
		nr.LinkIndex = idx
	}
	return c.h.RouteAdd(nr)
}
