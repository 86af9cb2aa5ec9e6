package dump

import (
	"errors"
	"fmt"
	"os"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/rtnl"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Net namespace contents are read with rtnetlink (internal/rtnl): a
// NETLINK_ROUTE socket belongs to the net namespace it was created in, so
// the dumper joins the namespace only to create it and talks to it from
// its own namespace afterwards.

// contents marks the ambient namespaces (the dumper's own) and reads what
// the image keeps of uts, net and mount namespaces. fds holds an open fd of every
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
	if err := rd.readNets(nets, fds); err != nil {
		return err
	}
	return rd.readMounts() // dump/mounts.go
}

// rawLink is a link as read, with what is needed to find a veth's peer.
type rawLink = rtnl.Link

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
				l.PeerName = peerName(links[l.PeerNS], l.PeerIndex)
				if l.PeerName == "" && !rd.tree.Namespace(l.PeerNS).Ambient {
					return fmt.Errorf("net namespace %d: veth %q: no interface %d in peer namespace %d", id, l.Name, l.PeerIndex, l.PeerNS)
				}
			}
			ns.Links = append(ns.Links, l.NetLink)
		}
	}
	return nil
}

func peerName(ls []rawLink, index int) string {
	for _, l := range ls {
		if l.Index == index {
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
		if ls[i].PeerNSID < 0 {
			ls[i].PeerNS = self
		} else {
			need = true
		}
	}
	if !need {
		return nil
	}
	c, err := rtnl.Open(fds[self])
	if err != nil {
		return err
	}
	defer c.Close()
	nsids := map[int]pstree.NSID{}
	for _, id := range ids {
		if id == self {
			continue
		}
		n, err := c.NSID(fds[id])
		if err != nil {
			return fmt.Errorf("nsid of net namespace %d: %w", id, err)
		}
		if n >= 0 {
			nsids[n] = id
		}
	}
	for i := range ls {
		if ls[i].Kind == pstree.LinkVeth && ls[i].PeerNSID >= 0 {
			ls[i].PeerNS = nsids[ls[i].PeerNSID]
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

// readNet reads the links (with addresses) and the routes a restore has
// to add itself of net namespace fd. A listing that changed while it was
// read is a race (procfs.ErrGone: the attempt is retried).
func readNet(fd int) ([]rawLink, []pstree.NetRoute, error) {
	ls, routes, err := readNetOnce(fd)
	if errors.Is(err, rtnl.ErrInterrupted) {
		err = fmt.Errorf("%w: %w", procfs.ErrGone, err)
	}
	return ls, routes, err
}

func readNetOnce(fd int) ([]rawLink, []pstree.NetRoute, error) {
	c, err := rtnl.Open(fd)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	all, err := c.Links()
	if err != nil {
		return nil, nil, err
	}
	var ls []rawLink
	byIndex := map[int]*rawLink{}
	for _, l := range all {
		if fallbackDevs[l.Name] != "" && fallbackDevs[l.Name] == l.KindName && !l.Up {
			continue
		}
		ls = append(ls, l)
	}
	for i := range ls {
		byIndex[ls[i].Index] = &ls[i]
	}
	rs, err := c.Routes()
	if err != nil {
		return nil, nil, err
	}
	var routes []pstree.NetRoute
	for _, r := range rs {
		if !restoredRoute(r.NetRoute) {
			continue
		}
		if r.OIF != 0 {
			l := byIndex[r.OIF]
			if l == nil {
				return nil, nil, fmt.Errorf("route to %v: output interface %d not listed", r.Dst, r.OIF)
			}
			r.Dev = l.Name
		}
		routes = append(routes, r.NetRoute)
	}
	return ls, routes, nil
}

// restoredRoute says whether a restore has to add r itself: not the
// routes of the local table, nor those the kernel made for an address
// (protocol "kernel"), nor multicast ones.
func restoredRoute(r pstree.NetRoute) bool {
	return r.Table != unix.RT_TABLE_LOCAL && r.Protocol != unix.RTPROT_KERNEL && r.Type != unix.RTN_MULTICAST
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
