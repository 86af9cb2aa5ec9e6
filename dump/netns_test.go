package dump

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// netScript starts two tasks in net+uts namespaces of their own (A with a
// second task sharing both, B alone) and writes their pids to $D/a, $D/b.
const netScript = `
cd "$D"
unshare -n -u busybox sh -c '
  busybox hostname alpha && echo example.org > /proc/sys/kernel/domainname
  busybox sleep 1000 &
  echo $$ > a.tmp && busybox mv a.tmp a
  wait' &
unshare -n -u busybox sh -c '
  busybox hostname beta
  echo $$ > b.tmp && busybox mv b.tmp b
  exec busybox sleep 1000' &
wait
`

// netTree starts netScript and returns the tree and the pids of A and B.
func netTree(t *testing.T) (tt *testTree, a, b int) {
	t.Helper()
	testutil.Require(t, testutil.Root)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	tt = startTree(t, netScript, 4, false)
	for _, p := range []*int{&a, &b} {
		name := "a"
		if p == &b {
			name = "b"
		}
		waitFile(t, filepath.Join(tt.dir, name))
		s, err := os.ReadFile(filepath.Join(tt.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		*p, _ = strconv.Atoi(strings.TrimSpace(string(s)))
	}
	return tt, a, b
}

// run runs a command (through nsenter into pid's net namespace when pid
// is not 0) and fails the test on error.
func run(t *testing.T, pid int, args ...string) string {
	t.Helper()
	if pid != 0 {
		args = append([]string{"nsenter", "-t", strconv.Itoa(pid), "-n", "--"}, args...)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
}

// linkName is an interface name of our own: others test on this machine.
func linkName(s string) string { return fmt.Sprintf("n%d%s", os.Getpid()%100000, s) }

// TestDumpNetNamespaces: two net namespaces joined by a veth pair with
// addresses and routes, pinged before the dump; hostnames.
func TestDumpNetNamespaces(t *testing.T) {
	tt, a, b := netTree(t)
	va, vb := linkName("a"), linkName("b")
	run(t, 0, "ip", "link", "add", va, "netns", strconv.Itoa(a), "mtu", "1400", "type", "veth",
		"peer", "name", vb, "netns", strconv.Itoa(b))
	run(t, a, "ip", "link", "set", "lo", "up")
	run(t, a, "ip", "addr", "add", "10.77.0.1/24", "dev", va)
	run(t, a, "ip", "addr", "add", "fd77::1/64", "dev", va, "nodad")
	run(t, a, "ip", "link", "set", va, "up")
	run(t, a, "ip", "route", "add", "10.78.0.0/24", "via", "10.77.0.2")
	run(t, b, "ip", "addr", "add", "10.77.0.2/24", "dev", vb)
	run(t, b, "ip", "link", "set", vb, "up")
	run(t, b, "ip", "route", "add", "default", "via", "10.77.0.1", "metric", "7")
	run(t, a, "busybox", "ping", "-c", "1", "-W", "5", "10.77.0.2")

	tr, err := Dump(tt.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pstree.Validate(tr); err != nil {
		t.Fatal(err)
	}
	ta, tb := tr.Task(a), tr.Task(b)
	if ta == nil || tb == nil {
		t.Fatalf("tasks %d, %d not in the image: %v", a, b, summary(tr))
	}
	// A and its sleep share both namespaces; the root's are ambient.
	for _, task := range tr.Tasks {
		if task.PPID == a {
			if task.NS[pstree.NetNS] != ta.NS[pstree.NetNS] || task.NS[pstree.UTSNS] != ta.NS[pstree.UTSNS] {
				t.Errorf("pid %d does not share A's net and uts namespaces", task.PID())
			}
		}
	}
	root := tr.Namespace(tr.Tasks[0].NS[pstree.NetNS])
	if !root.Ambient || root.Links != nil {
		t.Errorf("root net namespace: ambient %v, %d links", root.Ambient, len(root.Links))
	}
	host, _ := os.Hostname()
	if u := tr.Namespace(tr.Tasks[0].NS[pstree.UTSNS]); !u.Ambient || u.Hostname != host {
		t.Errorf("root uts namespace: ambient %v hostname %q, want ambient %q", u.Ambient, u.Hostname, host)
	}
	if u := tr.Namespace(ta.NS[pstree.UTSNS]); u.Ambient || u.Hostname != "alpha" || u.Domainname != "example.org" {
		t.Errorf("A's uts namespace: %+v", u)
	}
	if u := tr.Namespace(tb.NS[pstree.UTSNS]); u.Hostname != "beta" || u.Domainname != "(none)" {
		t.Errorf("B's uts namespace: hostname %q domainname %q", u.Hostname, u.Domainname)
	}

	na, nb := tr.Namespace(ta.NS[pstree.NetNS]), tr.Namespace(tb.NS[pstree.NetNS])
	lo := na.Link("lo")
	if lo == nil || lo.Kind != pstree.LinkLoopback || !lo.Up || !hasAddr(lo, "127.0.0.1/8") || !hasAddr(lo, "::1/128") {
		t.Errorf("A's loopback: %+v", lo)
	}
	if lo := nb.Link("lo"); lo == nil || lo.Up || len(lo.Addrs) != 0 {
		t.Errorf("B's loopback (down, no address): %+v", lo)
	}
	la, lb := na.Link(va), nb.Link(vb)
	if la == nil || lb == nil {
		t.Fatalf("veths missing: A %+v, B %+v", na.Links, nb.Links)
	}
	if la.Kind != pstree.LinkVeth || la.PeerNS != nb.ID || la.PeerName != vb || lb.PeerNS != na.ID || lb.PeerName != va {
		t.Errorf("veth pair: A %+v, B %+v", la, lb)
	}
	if !la.Up || la.MTU != 1400 || lb.MTU != 1500 || !hasAddr(la, "10.77.0.1/24") || !hasAddr(la, "fd77::1/64") || !hasAddr(lb, "10.77.0.2/24") {
		t.Errorf("veth settings: A %+v, B %+v", la, lb)
	}
	for _, x := range []struct {
		pid  int
		link *pstree.NetLink
	}{{a, la}, {b, lb}} {
		out := run(t, x.pid, "ip", "-o", "link", "show", x.link.Name)
		if f := strings.Fields(out[strings.Index(out, "link/ether"):]); f[1] != x.link.MAC.String() {
			t.Errorf("%s: MAC %v, ip says %s", x.link.Name, x.link.MAC, f[1])
		}
	}
	wantA := []pstree.NetRoute{{Dst: netip.MustParsePrefix("10.78.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.2"),
		Dev: va, Table: 254, Protocol: 3, Type: 1}}
	wantB := []pstree.NetRoute{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.77.0.1"),
		Dev: vb, Table: 254, Protocol: 3, Type: 1, Metric: 7}}
	if !reflect.DeepEqual(na.Routes, wantA) || !reflect.DeepEqual(nb.Routes, wantB) {
		t.Errorf("routes:\n A %+v\n want %+v\n B %+v\n want %+v", na.Routes, wantA, nb.Routes, wantB)
	}

	b2, err := imagefile.Encode(tr)
	if err != nil {
		t.Fatal(err)
	}
	back, err := imagefile.Decode(b2)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Namespaces, tr.Namespaces) {
		t.Errorf("image round trip changed the namespaces:\n%+v\n%+v", back.Namespaces, tr.Namespaces)
	}
	// The tree still works after the dump.
	run(t, b, "busybox", "ping", "-c", "1", "-W", "5", "10.77.0.1")
}

func hasAddr(l *pstree.NetLink, p string) bool {
	for _, a := range l.Addrs {
		if a == netip.MustParsePrefix(p) {
			return true
		}
	}
	return false
}

// TestDumpRefusesUnrestorableNet: a veth whose peer is in our own net
// namespace and a bridge are refused, naming namespace and interface.
func TestDumpRefusesUnrestorableNet(t *testing.T) {
	tt, a, _ := netTree(t)
	va, vh := linkName("a"), linkName("h")
	// vh stays here; the pair goes away with A's namespace when the tree dies.
	run(t, 0, "ip", "link", "add", vh, "type", "veth", "peer", "name", va, "netns", strconv.Itoa(a))
	t.Cleanup(func() { exec.Command("ip", "link", "del", vh).Run() })
	_, err := Dump(tt.root, Options{})
	if !errors.Is(err, ErrUnrepresentable) || !strings.Contains(err.Error(), fmt.Sprintf("veth %q", va)) ||
		!strings.Contains(err.Error(), "dumper's own net namespace") || !strings.Contains(err.Error(), fmt.Sprintf("of pid %d", a)) {
		t.Fatalf("veth to the host: got %v", err)
	}
	run(t, 0, "ip", "link", "del", vh)
	br := linkName("br")
	run(t, a, "ip", "link", "add", br, "type", "bridge")
	_, err = Dump(tt.root, Options{})
	if !errors.Is(err, ErrUnrepresentable) || !strings.Contains(err.Error(), fmt.Sprintf("interface %q is a bridge", br)) {
		t.Fatalf("bridge: got %v", err)
	}
	// check's reader still reads such a tree.
	tr, err := ReadLive(tt.root, "")
	if err != nil {
		t.Fatal(err)
	}
	if l := tr.Namespace(tr.Task(a).NS[pstree.NetNS]).Link(br); l == nil || l.Kind != pstree.LinkOther || l.KindName != "bridge" {
		t.Errorf("bridge as read: %+v", l)
	}
}
