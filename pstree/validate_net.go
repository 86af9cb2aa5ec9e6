package pstree

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
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
	for _, h := range []struct{ name, s string }{{"hostname", ns.Hostname}, {"domainname", ns.Domainname}} {
		if err := cString(h.s, maxHostname); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
	}
	if ns.Kind != UserNS && (ns.UIDMap != nil || ns.GIDMap != nil) {
		return errors.New("id maps on a namespace that is not a user namespace")
	}
	if ns.OwnerUID == InvalidID {
		return fmt.Errorf("owner uid %d is not a valid id", ns.OwnerUID)
	}
	for _, m := range []struct {
		name string
		m    []IDMapEntry
	}{{"uid_map", ns.UIDMap}, {"gid_map", ns.GIDMap}} {
		if err := validateMap(m.m); err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
	}
	if err := validateMounts(ns); err != nil {
		return err
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
		if err := cString(l.Name, maxIfName); l.Name == "" || err != nil {
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
		if err := cString(l.PeerName, maxIfName); err != nil {
			return fmt.Errorf("link %q: peer name: %w", l.Name, err)
		}
		if err := cString(l.KindName, maxIfName); err != nil {
			return fmt.Errorf("link %q: kind name: %w", l.Name, err)
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

// validateMap refuses a uid_map or gid_map the kernel would not take
// (kernel/user_namespace.c, map_write): more than MaxMapLines lines, an
// empty range, a range that wraps past InvalidID, ranges that overlap.
func validateMap(m []IDMapEntry) error {
	if len(m) > MaxMapLines {
		return fmt.Errorf("%d lines, more than %d", len(m), MaxMapLines)
	}
	for i, e := range m {
		if e.Count == 0 {
			return fmt.Errorf("line %d: empty range", i)
		}
		if uint64(e.Inside)+uint64(e.Count) > InvalidID || uint64(e.Outside)+uint64(e.Count) > InvalidID {
			return fmt.Errorf("line %d (%d %d %d): range overflows the ids", i, e.Inside, e.Outside, e.Count)
		}
	}
	for _, side := range []struct {
		name  string
		first func(IDMapEntry) uint32
	}{{"inside", func(e IDMapEntry) uint32 { return e.Inside }}, {"outside", func(e IDMapEntry) uint32 { return e.Outside }}} {
		s := slices.SortedFunc(slices.Values(m), func(a, b IDMapEntry) int { return cmp.Compare(side.first(a), side.first(b)) })
		for i := 1; i < len(s); i++ {
			if uint64(side.first(s[i-1]))+uint64(s[i-1].Count) > uint64(side.first(s[i])) {
				return fmt.Errorf("%s ranges at %d and %d overlap", side.name, side.first(s[i-1]), side.first(s[i]))
			}
		}
	}
	return nil
}

type linkKey struct {
	ns   NSID
	name string
}

// validatePeers checks that every veth whose peer is known names a veth of
// a recorded net namespace that names it back.
func validatePeers(tr *Tree, byID map[NSID]*Namespace) error {
	links := map[linkKey]*NetLink{}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		for j := range ns.Links {
			links[linkKey{ns.ID, ns.Links[j].Name}] = &ns.Links[j]
		}
	}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		for _, l := range ns.Links {
			if l.Kind != LinkVeth || l.PeerNS == 0 {
				continue
			}
			pns, ok := byID[l.PeerNS]
			if !ok || pns.Kind != NetNS {
				return fmt.Errorf("net namespace %d: veth %q: peer namespace %d is not a net namespace of the image", ns.ID, l.Name, l.PeerNS)
			}
			p := links[linkKey{pns.ID, l.PeerName}]
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
