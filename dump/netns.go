package dump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/nsinit/nsinit/internal/nsthread"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Net namespace contents are read with rtnetlink: a NETLINK_ROUTE socket
// belongs to the net namespace it was created in, so the dumper joins the
// namespace only for the socket() call (inNS) and talks to it from its own
// namespace afterwards.

// contents marks the ambient namespaces (the dumper's own) and reads what
// the image keeps of uts and net namespaces. fds holds an open fd of every
// namespace of the tree.
func (rd *reader) contents(fds map[pstree.NSID]int) error {
	for _, k := range pstree.AllNSKinds() {
		if k == pstree.PidForChildrenNS {
			continue
		}
		ino, err := rd.r.NSInode(os.Getpid(), k.ProcName())
		if err != nil {
			continue // the kernel lacks this kind (time namespaces before 5.6)
		}
		if id, ok := rd.ids[nsKey{k, ino}]; ok {
			rd.tree.Namespace(id).Ambient = true
		}
	}
	var nets []pstree.NSID
	for i := range rd.tree.Namespaces {
		ns := &rd.tree.Namespaces[i]
		switch ns.Kind {
		case pstree.UTSNS:
			if err := readUTS(ns, fds[ns.ID]); err != nil {
				return err
			}
		case pstree.NetNS:
			nets = append(nets, ns.ID)
		}
	}
	return rd.readNets(nets, fds)
}

// nlaTypeMask strips NLA_F_NESTED and NLA_F_NET_BYTEORDER off an attribute type.
const nlaTypeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// rawLink is a link as read, with what is needed to find a veth's peer.
type rawLink struct {
	pstree.NetLink
	index, peerIndex int32
	peerNSID         int32 // IFLA_LINK_NETNSID, valid if hasPeerNSID
	hasPeerNSID      bool
}

// readNets records the links and routes of every net namespace that is not
// ambient, and resolves veth peers across all net namespaces of the tree.
func (rd *reader) readNets(ids []pstree.NSID, fds map[pstree.NSID]int) error {
	links := map[pstree.NSID][]rawLink{}
	for _, id := range ids {
		ns := rd.tree.Namespace(id)
		if ns.Ambient {
			continue
		}
		ls, routes, err := readNet(fds[id])
		if err != nil {
			return fmt.Errorf("net namespace %d: %w", id, err)
		}
		// Resolve peers that are in another namespace: ask this
		// namespace which nsid it gives each of the tree's others.
		if err := peerNamespaces(fds, ids, id, ls); err != nil {
			return fmt.Errorf("net namespace %d: %w", id, err)
		}
		links[id] = ls
		ns.Routes = routes
	}
	for id, ls := range links {
		ns := rd.tree.Namespace(id)
		for _, l := range ls {
			if l.Kind == pstree.LinkVeth && l.PeerNS != 0 {
				l.PeerName = peerName(links[l.PeerNS], l.peerIndex)
				if l.PeerName == "" && !rd.tree.Namespace(l.PeerNS).Ambient {
					return fmt.Errorf("net namespace %d: veth %q: no interface %d in peer namespace %d", id, l.Name, l.peerIndex, l.PeerNS)
				}
			}
			ns.Links = append(ns.Links, l.NetLink)
		}
	}
	return nil
}

func peerName(ls []rawLink, index int32) string {
	for _, l := range ls {
		if l.index == index {
			return l.Name
		}
	}
	return ""
}

// peerNamespaces sets PeerNS of each veth in ls (read in namespace self):
// self when IFLA_LINK_NETNSID is absent, else the tree namespace that self
// knows under that nsid, else 0 (outside the tree).
func peerNamespaces(fds map[pstree.NSID]int, ids []pstree.NSID, self pstree.NSID, ls []rawLink) error {
	need := false
	for i := range ls {
		if ls[i].Kind != pstree.LinkVeth {
			continue
		}
		if !ls[i].hasPeerNSID {
			ls[i].PeerNS = self
		} else {
			need = true
		}
	}
	if !need {
		return nil
	}
	c, err := openRtnl(fds[self])
	if err != nil {
		return err
	}
	defer c.close()
	nsids := map[int32]pstree.NSID{}
	for _, id := range ids {
		if id == self {
			continue
		}
		n, err := c.nsid(fds[id])
		if err != nil {
			return fmt.Errorf("nsid of net namespace %d: %w", id, err)
		}
		if n >= 0 {
			nsids[n] = id
		}
	}
	for i := range ls {
		if ls[i].Kind == pstree.LinkVeth && ls[i].hasPeerNSID {
			ls[i].PeerNS = nsids[ls[i].peerNSID]
		}
	}
	return nil
}

// fallbackDevs are the tunnel devices the kernel creates in every new net
// namespace while their module is loaded: restore gets them for free.
var fallbackDevs = map[string]string{
	"tunl0": "ipip", "sit0": "sit", "ip6tnl0": "ip6tnl", "gre0": "gre", "gretap0": "gretap",
	"erspan0": "erspan", "ip_vti0": "vti", "ip6_vti0": "vti6", "ip6gre0": "ip6gre",
}

// readNet reads the links (with addresses) and routes of net namespace fd.
func readNet(fd int) ([]rawLink, []pstree.NetRoute, error) {
	c, err := openRtnl(fd)
	if err != nil {
		return nil, nil, err
	}
	defer c.close()
	var ls []rawLink
	err = c.dump(unix.RTM_GETLINK, make([]byte, unix.SizeofIfInfomsg), func(m syscall.NetlinkMessage) error {
		l, err := parseLink(m)
		if err != nil {
			return err
		}
		if fallbackDevs[l.Name] != "" && fallbackDevs[l.Name] == l.KindName && !l.Up {
			return nil
		}
		ls = append(ls, l)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	byIndex := map[int32]*rawLink{}
	for i := range ls {
		byIndex[ls[i].index] = &ls[i]
	}
	err = c.dump(unix.RTM_GETADDR, make([]byte, unix.SizeofIfAddrmsg), func(m syscall.NetlinkMessage) error {
		index, p, err := parseAddr(m)
		if err != nil {
			return err
		}
		if l := byIndex[index]; l != nil && p.IsValid() {
			l.Addrs = append(l.Addrs, p)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses: %w", err)
	}
	var routes []pstree.NetRoute
	err = c.dump(unix.RTM_GETROUTE, make([]byte, unix.SizeofRtMsg), func(m syscall.NetlinkMessage) error {
		r, oif, keep, err := parseRoute(m)
		if err != nil || !keep {
			return err
		}
		if oif != 0 {
			l := byIndex[oif]
			if l == nil {
				return fmt.Errorf("route to %v: output interface %d not listed", r.Dst, oif)
			}
			r.Dev = l.Name
		}
		routes = append(routes, r)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list routes: %w", err)
	}
	return ls, routes, nil
}

func parseLink(m syscall.NetlinkMessage) (rawLink, error) {
	if len(m.Data) < unix.SizeofIfInfomsg {
		return rawLink{}, errors.New("short RTM_NEWLINK")
	}
	ne := binary.NativeEndian
	typ := ne.Uint16(m.Data[2:])
	l := rawLink{index: int32(ne.Uint32(m.Data[4:]))}
	l.Up = ne.Uint32(m.Data[8:])&unix.IFF_UP != 0
	attrs, err := syscall.ParseNetlinkRouteAttr(&m)
	if err != nil {
		return l, fmt.Errorf("link %d: %w", l.index, err)
	}
	for _, a := range attrs {
		switch a.Attr.Type & nlaTypeMask {
		case unix.IFLA_IFNAME:
			l.Name = unix.ByteSliceToString(a.Value)
		case unix.IFLA_MTU:
			if len(a.Value) >= 4 {
				l.MTU = int(ne.Uint32(a.Value))
			}
		case unix.IFLA_ADDRESS:
			l.MAC = net.HardwareAddr(append([]byte(nil), a.Value...))
		case unix.IFLA_LINK:
			if len(a.Value) >= 4 {
				l.peerIndex = int32(ne.Uint32(a.Value))
			}
		case unix.IFLA_LINK_NETNSID:
			if len(a.Value) >= 4 {
				l.peerNSID, l.hasPeerNSID = int32(ne.Uint32(a.Value)), true
			}
		case unix.IFLA_LINKINFO:
			if kind, ok := nested(a.Value)[unix.IFLA_INFO_KIND]; ok {
				l.KindName = unix.ByteSliceToString(kind)
			}
		}
	}
	switch {
	case typ == unix.ARPHRD_LOOPBACK && l.KindName == "":
		l.Kind = pstree.LinkLoopback
		l.MAC = nil // all zeroes, and not settable
	case l.KindName == "veth":
		l.Kind = pstree.LinkVeth
	}
	return l, nil
}

// nested splits the attributes nested in b by type.
func nested(b []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	for len(b) >= unix.SizeofRtAttr {
		n := int(binary.NativeEndian.Uint16(b))
		if n < unix.SizeofRtAttr || n > len(b) {
			break
		}
		out[binary.NativeEndian.Uint16(b[2:])&nlaTypeMask] = b[unix.SizeofRtAttr:n]
		n = (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if n > len(b) {
			break
		}
		b = b[n:]
	}
	return out
}

func parseAddr(m syscall.NetlinkMessage) (int32, netip.Prefix, error) {
	if len(m.Data) < unix.SizeofIfAddrmsg {
		return 0, netip.Prefix{}, errors.New("short RTM_NEWADDR")
	}
	bits := int(m.Data[1])
	index := int32(binary.NativeEndian.Uint32(m.Data[4:]))
	attrs, err := syscall.ParseNetlinkRouteAttr(&m)
	if err != nil {
		return 0, netip.Prefix{}, err
	}
	var local, addr []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.IFA_LOCAL:
			local = a.Value
		case unix.IFA_ADDRESS:
			addr = a.Value
		}
	}
	if local != nil { // IFA_ADDRESS is the peer of a point-to-point link
		addr = local
	}
	ip, ok := netip.AddrFromSlice(addr)
	if !ok {
		return index, netip.Prefix{}, nil
	}
	return index, netip.PrefixFrom(ip, bits), nil
}

// parseRoute keeps the routes a restore has to add itself: not those of the
// local table, and not those the kernel made for an address (protocol
// "kernel"); multicast and cache entries neither.
func parseRoute(m syscall.NetlinkMessage) (r pstree.NetRoute, oif int32, keep bool, err error) {
	if len(m.Data) < unix.SizeofRtMsg {
		return r, 0, false, errors.New("short RTM_NEWROUTE")
	}
	d := m.Data
	family, dstLen := d[0], int(d[1])
	r.Table, r.Protocol, r.Scope, r.Type = uint32(d[4]), d[5], d[6], d[7]
	flags := binary.NativeEndian.Uint32(d[8:])
	attrs, err := syscall.ParseNetlinkRouteAttr(&m)
	if err != nil {
		return r, 0, false, err
	}
	ne := binary.NativeEndian
	var dst []byte
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_TABLE:
			if len(a.Value) >= 4 {
				r.Table = ne.Uint32(a.Value)
			}
		case unix.RTA_DST:
			dst = a.Value
		case unix.RTA_GATEWAY:
			r.Gateway, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_PREFSRC:
			r.Src, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_OIF:
			if len(a.Value) >= 4 {
				oif = int32(ne.Uint32(a.Value))
			}
		case unix.RTA_PRIORITY:
			if len(a.Value) >= 4 {
				r.Metric = ne.Uint32(a.Value)
			}
		}
	}
	if r.Table == unix.RT_TABLE_LOCAL || r.Protocol == unix.RTPROT_KERNEL ||
		r.Type == unix.RTN_MULTICAST || flags&unix.RTM_F_CLONED != 0 {
		return r, 0, false, nil
	}
	var zero netip.Addr
	switch family {
	case unix.AF_INET:
		zero = netip.IPv4Unspecified()
	case unix.AF_INET6:
		zero = netip.IPv6Unspecified()
	default:
		return r, 0, false, nil
	}
	a := zero
	if dst != nil {
		var ok bool
		if a, ok = netip.AddrFromSlice(dst); !ok || a.Is4() != zero.Is4() {
			return r, 0, false, fmt.Errorf("route with a %d-byte destination", len(dst))
		}
	}
	if dstLen > a.BitLen() {
		return r, 0, false, fmt.Errorf("route to %v/%d: prefix too long", a, dstLen)
	}
	r.Dst = netip.PrefixFrom(a, dstLen)
	return r, oif, true, nil
}

// rtnl is a NETLINK_ROUTE socket of one net namespace.
type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

// openRtnl opens a NETLINK_ROUTE socket in net namespace nsfd.
func openRtnl(nsfd int) (*rtnl, error) {
	fd := -1
	err := nsthread.In(nsfd, unix.CLONE_NEWNET, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	return &rtnl{fd: fd, buf: make([]byte, 1<<16)}, nil
}

func (c *rtnl) close() { unix.Close(c.fd) }

// dump sends a NLM_F_DUMP request and passes every answer to fn.
func (c *rtnl) dump(typ uint16, body []byte, fn func(syscall.NetlinkMessage) error) error {
	return c.do(typ, unix.NLM_F_DUMP, body, fn)
}

// nsid asks which id this namespace gives net namespace fd (-1: none).
func (c *rtnl) nsid(fd int) (int32, error) {
	body := make([]byte, 4+unix.SizeofRtAttr+4) // rtgenmsg (padded), NETNSA_FD u32
	ne := binary.NativeEndian
	ne.PutUint16(body[4:], unix.SizeofRtAttr+4)
	ne.PutUint16(body[6:], unix.NETNSA_FD)
	ne.PutUint32(body[8:], uint32(fd))
	id := int32(unix.NETNSA_NSID_NOT_ASSIGNED)
	err := c.do(unix.RTM_GETNSID, 0, body, func(m syscall.NetlinkMessage) error {
		if len(m.Data) < 4 {
			return errors.New("short RTM_NEWNSID")
		}
		if v, ok := nested(m.Data[4:])[unix.NETNSA_NSID]; ok && len(v) >= 4 {
			id = int32(ne.Uint32(v))
		}
		return nil
	})
	return id, err
}

func (c *rtnl) do(typ, flags uint16, body []byte, fn func(syscall.NetlinkMessage) error) error {
	c.seq++
	req := make([]byte, unix.SizeofNlMsghdr+len(body))
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|flags)
	ne.PutUint32(req[8:], c.seq)
	copy(req[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq {
				continue // a late answer to an earlier request
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				return fmt.Errorf("netlink dump interrupted by a change: %w", procfs.ErrGone)
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("short netlink error")
				}
				if e := int32(ne.Uint32(m.Data)); e != 0 {
					return fmt.Errorf("netlink request %d: %w", typ, unix.Errno(-e))
				}
				return nil
			}
			if err := fn(m); err != nil {
				return err
			}
			if m.Header.Flags&unix.NLM_F_MULTI == 0 {
				return nil
			}
		}
	}
}

// netRestorable refuses net namespace contents that restore cannot
// re-create: interfaces other than loopback and veth, and veths whose peer
// is outside the tree's recorded net namespaces.
func netRestorable(tr *pstree.Tree) error {
	for _, ns := range tr.Namespaces {
		if ns.Kind != pstree.NetNS || ns.Ambient {
			continue
		}
		where := fmt.Sprintf("net namespace %d (of pid %d)", ns.ID, firstMember(tr, pstree.NetNS, ns.ID))
		for _, l := range ns.Links {
			switch {
			case l.Kind == pstree.LinkOther:
				kind := l.KindName
				if kind == "" {
					kind = "device"
				}
				return fmt.Errorf("%w: %s: interface %q is a %s: restore re-creates only loopback and veth interfaces",
					ErrUnrepresentable, where, l.Name, kind)
			case l.Kind == pstree.LinkVeth && l.PeerNS == 0:
				return fmt.Errorf("%w: %s: veth %q has its peer in a net namespace outside the tree",
					ErrUnrepresentable, where, l.Name)
			case l.Kind == pstree.LinkVeth && tr.Namespace(l.PeerNS).Ambient:
				return fmt.Errorf("%w: %s: veth %q has its peer in the dumper's own net namespace (%d), which restore does not re-create",
					ErrUnrepresentable, where, l.Name, l.PeerNS)
			}
		}
	}
	return nil
}

func firstMember(tr *pstree.Tree, k pstree.NSKind, id pstree.NSID) int {
	for _, t := range tr.Tasks {
		if t.NS[k] == id {
			return t.PIDs[0]
		}
	}
	return 0
}
