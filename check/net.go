package check

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// netContents compares two matched net namespaces: interfaces by name
// (kind, up, mtu, mac, addresses, and a veth's peer by namespace shape and
// name, never by ifindex) and routes as sets.
func (c *comparer) netContents(what string, na, nb *pstree.Namespace) {
	names := func(ls []pstree.NetLink) []string {
		var out []string
		for _, l := range ls {
			out = append(out, l.Name)
		}
		slices.Sort(out)
		return out
	}
	if a, b := names(na.Links), names(nb.Links); !slices.Equal(a, b) {
		c.add(0, what+": interfaces", a, b)
	}
	for _, la := range na.Links {
		lb := nb.Link(la.Name)
		if lb == nil {
			continue
		}
		w := fmt.Sprintf("%s: interface %s", what, la.Name)
		if x, y := linkProps(la), linkProps(*lb); x != y {
			c.add(0, w, x, y)
		}
		if a, b := addrs(la), addrs(*lb); !slices.Equal(a, b) {
			c.add(0, w+": addresses", a, b)
		}
		if la.Kind == pstree.LinkVeth {
			if la.PeerName != lb.PeerName {
				c.add(0, w+": veth peer", la.PeerName, lb.PeerName)
			}
			c.related(w+": veth peer namespace", la.PeerNS, lb.PeerNS)
		}
	}
	if a, b := routes(na.Routes), routes(nb.Routes); !slices.Equal(a, b) {
		c.add(0, what+": routes", a, b)
	}
}

func linkProps(l pstree.NetLink) string {
	return fmt.Sprintf("%v(%s) up=%v mtu=%d mac=%v", l.Kind, l.KindName, l.Up, l.MTU, l.MAC)
}

func addrs(l pstree.NetLink) []string {
	var out []string
	for _, a := range l.Addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

func routes(rs []pstree.NetRoute) []string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%v via %v src %v dev %q table %d proto %d scope %d type %d metric %d",
			r.Dst, r.Gateway, r.Src, r.Dev, r.Table, r.Protocol, r.Scope, r.Type, r.Metric))
	}
	slices.Sort(out)
	return out
}
