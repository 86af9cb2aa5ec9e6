package pstree

import (
	"errors"
	"fmt"
)

// Limits the kernel puts on namespace contents.
const (
	maxIfName   = 15 // IFNAMSIZ - 1
	maxHostname = 64 // __NEW_UTS_LEN
)

// validateContents checks what one namespace carries besides its identity.
func validateContents(ns *Namespace) error {
	if ns.Kind != UTSNS && (ns.Hostname != "" || ns.Domainname != "") {
		return errors.New("hostname or domainname on a namespace that is not uts")
	}
	if len(ns.Hostname) > maxHostname || len(ns.Domainname) > maxHostname {
		return fmt.Errorf("hostname or domainname longer than %d bytes", maxHostname)
	}
	if ns.Kind != UserNS && (ns.UIDMap != nil || ns.GIDMap != nil) {
		return errors.New("id maps on a namespace that is not a user namespace")
	}
	if ns.Kind != NetNS || ns.Ambient {
		if ns.Links != nil || ns.Routes != nil {
			return errors.New("links or routes on a namespace that is not a recorded net namespace")
		}
		return nil
	}
	names := map[string]bool{}
	for i := range ns.Links {
		l := &ns.Links[i]
		if l.Name == "" || len(l.Name) > maxIfName {
			return fmt.Errorf("link %d: bad name %q", i, l.Name)
		}
		if names[l.Name] {
			return fmt.Errorf("link %q listed twice", l.Name)
		}
		names[l.Name] = true
		if l.Kind < LinkOther || l.Kind > LinkVeth {
			return fmt.Errorf("link %q: bad kind %d", l.Name, int(l.Kind))
		}
		if l.MTU < 0 {
			return fmt.Errorf("link %q: negative mtu", l.Name)
		}
		if l.Kind != LinkVeth && (l.PeerNS != 0 || l.PeerName != "") {
			return fmt.Errorf("link %q: a %v link has no peer", l.Name, l.Kind)
		}
		for _, a := range l.Addrs {
			if !a.IsValid() {
				return fmt.Errorf("link %q: invalid address", l.Name)
			}
		}
	}
	for i, r := range ns.Routes {
		if !r.Dst.IsValid() {
			return fmt.Errorf("route %d: invalid destination", i)
		}
		for _, a := range []struct {
			what string
			ok   bool
		}{{"gateway", !r.Gateway.IsValid() || r.Gateway.Is4() == r.Dst.Addr().Is4()},
			{"source", !r.Src.IsValid() || r.Src.Is4() == r.Dst.Addr().Is4()}} {
			if !a.ok {
				return fmt.Errorf("route %d to %v: %s of another address family", i, r.Dst, a.what)
			}
		}
		if r.Dev != "" && !names[r.Dev] {
			return fmt.Errorf("route %d to %v: device %q is not a link of the namespace", i, r.Dst, r.Dev)
		}
	}
	return nil
}

// validatePeers checks that every veth whose peer is known names a veth of
// a recorded net namespace that names it back.
func validatePeers(byID map[NSID]*Namespace) error {
	for _, ns := range byID {
		for _, l := range ns.Links {
			if l.Kind != LinkVeth || l.PeerNS == 0 {
				continue
			}
			pns, ok := byID[l.PeerNS]
			if !ok || pns.Kind != NetNS {
				return fmt.Errorf("net namespace %d: veth %q: peer namespace %d is not a net namespace of the image", ns.ID, l.Name, l.PeerNS)
			}
			p := pns.Link(l.PeerName)
			if p == nil || p.Kind != LinkVeth {
				return fmt.Errorf("net namespace %d: veth %q: peer %q is not a veth of net namespace %d", ns.ID, l.Name, l.PeerName, pns.ID)
			}
			if p.PeerNS != ns.ID || p.PeerName != l.Name || (pns == ns && p.Name == l.Name) {
				return fmt.Errorf("net namespace %d: veth %q: peer %q in namespace %d does not point back", ns.ID, l.Name, l.PeerName, pns.ID)
			}
		}
	}
	return nil
}
