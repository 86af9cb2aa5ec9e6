package imagefile

import (
	"fmt"
	"math"
	"net"
	"net/netip"

	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
)

// Net namespace contents: addresses travel as 4 or 16 raw bytes, so a
// decoder rejects any other length instead of guessing.

func linksToProto(ls []pstree.NetLink) []*imagepb.NetLink {
	var out []*imagepb.NetLink
	for _, l := range ls {
		pl := &imagepb.NetLink{
			Name:     []byte(l.Name),
			Kind:     imagepb.LinkKind(l.Kind),
			KindName: []byte(l.KindName),
			Up:       l.Up,
			Mtu:      uint32(l.MTU),
			Mac:      []byte(l.MAC),
			PeerNs:   uint32(l.PeerNS),
			PeerName: []byte(l.PeerName),
		}
		for _, a := range l.Addrs {
			pl.Addrs = append(pl.Addrs, prefixToProto(a))
		}
		out = append(out, pl)
	}
	return out
}

func linksFromProto(pls []*imagepb.NetLink) ([]pstree.NetLink, error) {
	var out []pstree.NetLink
	for i, pl := range pls {
		if pl.GetMtu() > math.MaxInt32 {
			return nil, fmt.Errorf("link %d: mtu %d out of range", i, pl.GetMtu())
		}
		l := pstree.NetLink{
			Name:     string(pl.GetName()),
			Kind:     pstree.LinkKind(pl.GetKind()),
			KindName: string(pl.GetKindName()),
			Up:       pl.GetUp(),
			MTU:      int(pl.GetMtu()),
			PeerNS:   pstree.NSID(pl.GetPeerNs()),
			PeerName: string(pl.GetPeerName()),
		}
		if m := pl.GetMac(); m != nil {
			l.MAC = net.HardwareAddr(m)
		}
		for _, pa := range pl.GetAddrs() {
			a, err := prefixFromProto(pa)
			if err != nil {
				return nil, fmt.Errorf("link %d (%q): %w", i, l.Name, err)
			}
			l.Addrs = append(l.Addrs, a)
		}
		out = append(out, l)
	}
	return out, nil
}

func routesToProto(rs []pstree.NetRoute) []*imagepb.NetRoute {
	var out []*imagepb.NetRoute
	for _, r := range rs {
		out = append(out, &imagepb.NetRoute{
			Dst:      prefixToProto(r.Dst),
			Gateway:  addrToProto(r.Gateway),
			Src:      addrToProto(r.Src),
			Dev:      []byte(r.Dev),
			Table:    r.Table,
			Protocol: uint32(r.Protocol),
			Scope:    uint32(r.Scope),
			Type:     uint32(r.Type),
			Metric:   r.Metric,
		})
	}
	return out
}

func routesFromProto(prs []*imagepb.NetRoute) ([]pstree.NetRoute, error) {
	var out []pstree.NetRoute
	for i, pr := range prs {
		if pr.GetProtocol() > math.MaxUint8 || pr.GetScope() > math.MaxUint8 || pr.GetType() > math.MaxUint8 {
			return nil, fmt.Errorf("route %d: protocol, scope or type out of range", i)
		}
		r := pstree.NetRoute{
			Dev:      string(pr.GetDev()),
			Table:    pr.GetTable(),
			Protocol: uint8(pr.GetProtocol()),
			Scope:    uint8(pr.GetScope()),
			Type:     uint8(pr.GetType()),
			Metric:   pr.GetMetric(),
		}
		var err error
		if r.Dst, err = prefixFromProto(pr.GetDst()); err != nil {
			return nil, fmt.Errorf("route %d: dst: %w", i, err)
		}
		if r.Gateway, err = addrFromProto(pr.GetGateway()); err != nil {
			return nil, fmt.Errorf("route %d: gateway: %w", i, err)
		}
		if r.Src, err = addrFromProto(pr.GetSrc()); err != nil {
			return nil, fmt.Errorf("route %d: src: %w", i, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func prefixToProto(p netip.Prefix) *imagepb.NetPrefix {
	if !p.IsValid() {
		return nil
	}
	return &imagepb.NetPrefix{Ip: p.Addr().AsSlice(), Bits: uint32(p.Bits())}
}

func prefixFromProto(pp *imagepb.NetPrefix) (netip.Prefix, error) {
	if pp == nil {
		return netip.Prefix{}, nil
	}
	a, ok := netip.AddrFromSlice(pp.GetIp())
	if !ok {
		return netip.Prefix{}, fmt.Errorf("address of %d bytes", len(pp.GetIp()))
	}
	if pp.GetBits() > uint32(a.BitLen()) {
		return netip.Prefix{}, fmt.Errorf("prefix length %d for %v", pp.GetBits(), a)
	}
	return netip.PrefixFrom(a, int(pp.GetBits())), nil
}

func addrToProto(a netip.Addr) []byte {
	if !a.IsValid() {
		return nil
	}
	return a.AsSlice()
}

func addrFromProto(b []byte) (netip.Addr, error) {
	if len(b) == 0 {
		return netip.Addr{}, nil
	}
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("address of %d bytes", len(b))
	}
	return a, nil
}
