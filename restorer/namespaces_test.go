package restorer

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// addNS adds a namespace of kind k to a hand-built tree.
func (b *tb) addNS(id pstree.NSID, k pstree.NSKind, ambient bool) *pstree.Namespace {
	b.tr.Namespaces = append(b.tr.Namespaces, pstree.Namespace{ID: id, Kind: k, Ambient: ambient})
	return &b.tr.Namespaces[len(b.tr.Namespaces)-1]
}

// nsTree: the root in the restorer's (ambient) namespaces; a child in new
// net, uts (with names), ipc, mnt and cgroup namespaces; its child back in
// the ambient uts namespace; a second child of the root joining the first
// child's net and uts namespaces; its child in a third net namespace.
func nsTree() *pstree.Tree {
	b := newTB()
	kinds := []pstree.NSKind{pstree.NetNS, pstree.UTSNS, pstree.IPCNS, pstree.MntNS, pstree.CgroupNS}
	for i, k := range kinds {
		b.addNS(pstree.NSID(10*(i+1)), k, true)
		b.addNS(pstree.NSID(10*(i+1)+1), k, false)
	}
	b.addNS(12, pstree.NetNS, false)
	for i := range b.tr.Namespaces {
		if n := &b.tr.Namespaces[i]; n.ID == 21 {
			n.Hostname, n.Domainname = "restored-alpha", "example.test"
		}
	}
	set := func(t *pstree.Task, net, uts, ipc, mnt, cg pstree.NSID) {
		t.NS[pstree.NetNS], t.NS[pstree.UTSNS], t.NS[pstree.IPCNS], t.NS[pstree.MntNS], t.NS[pstree.CgroupNS] = net, uts, ipc, mnt, cg
	}
	set(b.task(1, []int{22100}, 0, []int{22100}, []int{22100}), 10, 20, 30, 40, 50)
	set(b.task(1, []int{22101}, 22100, []int{22100}, []int{22100}), 11, 21, 31, 41, 51)
	set(b.task(1, []int{22102}, 22101, []int{22100}, []int{22100}), 11, 20, 31, 41, 51)
	set(b.task(1, []int{22103}, 22100, []int{22100}, []int{22100}), 11, 21, 30, 40, 50)
	set(b.task(1, []int{22104}, 22103, []int{22100}, []int{22100}), 12, 21, 30, 40, 50)
	return &b.tr
}

func TestPlanNamespaces(t *testing.T) {
	p := mustPlan(t, nsTree(), Options{})
	var got []string
	for _, s := range p.Steps {
		if s.Op == OpUnshare || s.Op == OpSetns || s.Op == OpHostname {
			got = append(got, p.name(s.Actor)+": "+p.describe(&s))
		}
	}
	want := `task 22101: sethostname("restored-alpha") setdomainname("example.test")
task 22101: unshare(net 11, uts 21, ipc 31, mnt 41, cgroup 51)
task 22102: setns(uts 20 via helper 0)
task 22103: setns(net 11, uts 21 via task 22101)
task 22104: unshare(net 12)`
	slices.Sort(got) // per task in plan order; tasks in name order
	if g := strings.Join(got, "\n"); g != want {
		t.Errorf("namespace steps:\n%s\nwant\n%s", g, want)
	}
	tr := nsTree()
	tr.Tasks[2].NS[pstree.TimeNS] = 99
	tr.Namespaces = append(tr.Namespaces, pstree.Namespace{ID: 99, Kind: pstree.TimeNS})
	if _, err := NewPlan(tr, Options{}); err == nil || !strings.Contains(err.Error(), "time namespace") {
		t.Errorf("non-ambient time namespace: %v, want refused", err)
	}
}

func TestRestoreNamespaces(t *testing.T) { scenario(t, nsTree) }

// checkNSMembership compares, for every live task and every kind, who
// shares which namespace with the image, through namespace inodes; an
// ambient namespace must be the test process's own. UTS names are read
// inside each uts namespace.
func checkNSMembership(t *testing.T, tr *pstree.Tree) {
	t.Helper()
	ino := func(pid int, k pstree.NSKind) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, k), &st); err != nil {
			t.Errorf("%v", err)
		}
		return st.Ino
	}
	byID := map[pstree.NSID]uint64{}
	byIno := map[uint64]pstree.NSID{}
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			continue
		}
		for _, k := range memberKinds {
			id := tk.NS[k]
			if id == 0 {
				continue
			}
			in := ino(tk.PID(), k)
			if tr.Namespace(id).Ambient && in != ino(os.Getpid(), k) {
				t.Errorf("task %v: %v namespace is not the restorer's own", tk.PIDs, k)
			}
			if old, ok := byID[id]; ok && old != in {
				t.Errorf("task %v: %v namespace %d split in two", tk.PIDs, k, id)
			}
			if old, ok := byIno[in]; ok && old != id {
				t.Errorf("task %v: %v namespaces %d and %d are one", tk.PIDs, k, id, old)
			}
			byID[id], byIno[in] = in, id
		}
		if ns := tr.Namespace(tk.NS[pstree.UTSNS]); ns != nil && !ns.Ambient {
			out, err := nsenter("-t", strconv.Itoa(tk.PID()), "-u", "/bin/busybox", "sh", "-c",
				"/bin/busybox hostname; /bin/busybox cat /proc/sys/kernel/domainname").CombinedOutput()
			if want := ns.Hostname + "\n" + ns.Domainname + "\n"; err != nil || string(out) != want {
				t.Errorf("task %v: uts names %q (%v), want %q", tk.PIDs, out, err, want)
			}
		}
	}
}

// vethTree: two tasks, each in its own net namespace (not the restorer's),
// joined by a veth pair with addresses, loopback up in both, a default
// route in the second.
func vethTree() *pstree.Tree {
	b := newTB()
	pfx := netip.MustParsePrefix
	lo := pstree.NetLink{Name: "lo", Kind: pstree.LinkLoopback, Up: true, MTU: 65536, Addrs: []netip.Prefix{pfx("127.0.0.1/8"), pfx("::1/128")}}
	a := b.addNS(11, pstree.NetNS, false)
	a.Links = []pstree.NetLink{lo, {Name: "va", Kind: pstree.LinkVeth, KindName: "veth", Up: true, MTU: 1400, PeerNS: 12, PeerName: "vb",
		Addrs: []netip.Prefix{pfx("10.77.0.1/24"), pfx("fd77::1/64")}}}
	c := b.addNS(12, pstree.NetNS, false)
	c.Links = []pstree.NetLink{lo, {Name: "vb", Kind: pstree.LinkVeth, KindName: "veth", Up: true, MTU: 1400, PeerNS: 11, PeerName: "va",
		Addrs: []netip.Prefix{pfx("10.77.0.2/24")}}}
	c.Routes = []pstree.NetRoute{{Dst: pfx("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.77.0.1"), Dev: "vb", Table: unix.RT_TABLE_MAIN,
		Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_UNIVERSE, Type: unix.RTN_UNICAST}}
	b.task(1, []int{22200}, 0, []int{22200}, []int{22200}).NS[pstree.NetNS] = 11
	b.task(1, []int{22201}, 22200, []int{22200}, []int{22200}).NS[pstree.NetNS] = 12
	return &b.tr
}

// nsenter runs nsenter from util-linux, or busybox's (the VM guest has
// only busybox); both take -t PID -u/-n/-p and fork for -p.
func nsenter(args ...string) *exec.Cmd {
	if _, err := exec.LookPath("nsenter"); err == nil {
		return exec.Command("nsenter", args...)
	}
	return exec.Command("/bin/busybox", append([]string{"nsenter"}, args...)...)
}

// ping pings addr from inside pid's net namespace.
func ping(t *testing.T, pid int, addr string) {
	t.Helper()
	out, err := nsenter("-t", strconv.Itoa(pid), "-n", "/bin/busybox", "ping", "-c", "1", "-W", "5", addr).CombinedOutput()
	if err != nil {
		t.Errorf("ping %s from %d: %v\n%s", addr, pid, err, out)
	}
}

// TestE2EVethPing: the veth tree restored from a hand-written image pings
// across its veth (and through the route to the other end's second
// address) and on loopback; it is dumped and killed, restored from the
// dump, checked equal, and pings again.
func TestE2EVethPing(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	if ko := os.Getenv("NSINIT_TEST_VETH_KO"); ko != "" {
		// the VM guest's kernel has veth as a module
		if out, err := exec.Command("/bin/busybox", "insmod", ko).CombinedOutput(); err != nil && !strings.Contains(string(out), "exists") {
			t.Fatalf("insmod %s: %v\n%s", ko, err, out)
		}
	}
	tr := place(t, sleepers(vethTree()))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	a, b := tr.Tasks[0].PID(), tr.Tasks[1].PID()
	if out, err := nsinit(t, "restore", "-D", src, "-d"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	ping(t, a, "10.77.0.2")
	ping(t, b, "10.77.0.1")
	ping(t, a, "127.0.0.1")
	ping(t, b, "::1")
	// The image lists every address: no link-local address of the
	// kernel's own may appear later (the VM's slow kernel showed one
	// arriving after the dump).
	out, err := nsenter("-t", strconv.Itoa(b), "-n", "/bin/busybox", "cat", "/proc/sys/net/ipv6/conf/vb/addr_gen_mode").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("addr_gen_mode of vb: %q %v, want 1 (none)", out, err)
	}
	img := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(a), "-D", img, "--unchecked", "--kill"); err != nil {
		t.Fatalf("dump --kill: %v\n%s", err, out)
	}
	waitGone(t, tr)
	if out, err := nsinit(t, "restore", "-D", img, "-d"); err != nil {
		t.Fatalf("restore of the dump: %v\n%s", err, out)
	}
	if out, err := nsinit(t, "check", "-t", strconv.Itoa(a), "-D", img); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
	ping(t, a, "10.77.0.2")
	ping(t, b, "10.77.0.1")
	ping(t, a, "127.0.0.1")
}

// userTree: the root in the restorer's user namespace; below it a user
// namespace U1 (uids and gids 0-65535 inside = 100000-165535 outside)
// owning a pid namespace, a net and a uts namespace, with tasks of
// different uids inside; below U1 a user namespace U2 (0-999 inside =
// 101000-101999 outside, setgroups denied) owning a pid namespace at level
// 2.
func userTree() *pstree.Tree {
	b := nestedUserNS()
	b.addNS(11, pstree.NetNS, false).Owner = 61
	b.addNS(21, pstree.UTSNS, false).Owner = 61
	b.tr.Namespace(21).Hostname = "in-u1"
	b.tr.Namespace(2).Owner, b.tr.Namespace(3).Owner = 61, 62
	b.tr.Namespace(1).Owner = 60
	creds := func(t *pstree.Task, id uint32) {
		t.Creds = pstree.Creds{UID: id, EUID: id, SUID: id, FSUID: id, GID: id, EGID: id, SGID: id, FSGID: id}
	}
	b.task(1, []int{22300}, 0, []int{22300}, []int{22300}).NS[pstree.UserNS] = 60
	// the "unshare -U -p -n -u -f" process: in U1, its child is PID 1
	p := b.task(1, []int{22301}, 22300, []int{22300}, []int{22300})
	p.NS[pstree.UserNS], p.NS[pstree.NetNS], p.NS[pstree.UTSNS], p.NS[pstree.PidForChildrenNS] = 61, 11, 21, 2
	creds(p, 100000)
	in := func(ns pstree.NSID, user pstree.NSID, uid uint32, pids []int, ppid int) {
		sids, pgids := make([]int, len(pids)), make([]int, len(pids))
		sids[0], pgids[0] = 22300, 22300
		t := b.task(ns, pids, ppid, sids, pgids)
		t.NS[pstree.UserNS], t.NS[pstree.NetNS], t.NS[pstree.UTSNS] = user, 11, 21
		creds(t, uid)
	}
	in(2, 61, 100000, []int{22302, 1}, 22301)
	in(2, 61, 101000, []int{22303, 2}, 22302)
	in(2, 61, 100033, []int{22304, 3}, 22302)
	// the second level: U2's first member unshares it and forks its init
	in(2, 62, 101000, []int{22305, 4}, 22302)
	b.tr.Tasks[len(b.tr.Tasks)-1].NS[pstree.PidForChildrenNS] = 3
	in(3, 62, 101000, []int{22306, 5, 1}, 22305)
	in(3, 62, 101007, []int{22307, 6, 2}, 22306)
	// threads (stopped payload): in each user namespace below the host's;
	// tids clear of the 100 tasks TestNoPtraceWindowUserNS adds
	b.tr.Tasks[3].Threads = []pstree.Thread{{TIDs: []int{22500, 200}}}
	b.tr.Tasks[len(b.tr.Tasks)-1].Threads = []pstree.Thread{{TIDs: []int{22501, 201, 200}}}
	return &b.tr
}

func TestPlanUserNamespaces(t *testing.T) {
	p := mustPlan(t, userTree(), Options{})
	var got []string
	for _, s := range p.Steps {
		if s.Op == OpUnshare || s.Op == OpSetns || s.Op == OpUserMap {
			got = append(got, p.name(s.Actor)+": "+p.describe(&s))
		}
	}
	t.Logf("\n%s", strings.Join(got, "\n"))
	for _, want := range []string{
		"task 22301: unshare(user 61, net 11, uts 21)",
		`helper 0: write maps of user 61 via task 22301: uid_map "0 100000 65536\n" gid_map "0 100000 65536\n"`,
		"task 22305/4: unshare(user 62)",
		`task 22301: write maps of user 62 via task 22305/4: uid_map "0 1000 1000\n" gid_map "0 1000 1000\n"`,
	} {
		if !slices.Contains(got, want) {
			t.Errorf("missing step %q", want)
		}
	}
	uid, _, _, sg, err := taskCreds(p, 7)
	if err != nil || uid != [3]uint32{7, 7, 7} || sg {
		t.Errorf("creds of the last task in U2: %v setgroups=%v %v, want uid 7 without setgroups", uid, sg, err)
	}
	// A pid namespace owned by a user namespace its creator is not in.
	bad := userTree()
	bad.Namespace(2).Owner = 62
	if _, err := NewPlan(bad, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("pid ns owned by another user ns: %v, want ErrUnsupported", err)
	}
	// A uid the task's user namespace does not map.
	bad = userTree()
	bad.Tasks[3].Creds.UID = 5
	if p, err := NewPlan(bad, Options{}); err != nil {
		t.Errorf("unmapped uid: %v, want it kept from the builder", err)
	} else if err := keptIDs(p, 3, [3]uint32{}, [3]uint32{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unmapped uid 5 kept from a restorer of uid 0: %v, want ErrUnsupported", err)
	}
}

// userNS61 is a tree with pid ns 2 below the host's, the host's user ns
// 60 and its child 61, which maps 0-65535 to 100000 up.
func userNS61() *tb {
	b := newTB().ns(2, 1, 1)
	b.addNS(60, pstree.UserNS, true)
	u1 := b.addNS(61, pstree.UserNS, false)
	u1.Parent, u1.SetgroupsAllowed = 60, true
	u1.UIDMap = []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 65536}}
	u1.GIDMap = u1.UIDMap
	return b
}

// unmappedTree: tasks with ids their user namespace does not map. A
// unshared user ns 61, whose map ("0 100000 65536") leaves out A's uid 0;
// C unshared user ns 63 and nobody wrote its maps; C's child D is PID 1 of
// pid ns 2, which C made inside 63; E unshared user ns 64, which got a
// uid map ("0 0 1") and no gid map (the writer gave up on it).
func unmappedTree() *pstree.Tree {
	b := userNS61()
	b.addNS(63, pstree.UserNS, false).Parent = 60
	u4 := b.addNS(64, pstree.UserNS, false)
	u4.Parent, u4.UIDMap = 60, []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 1}}
	b.tr.Namespace(1).Owner, b.tr.Namespace(2).Owner = 60, 63
	for _, tk := range []struct {
		ns, user pstree.NSID
		pids     []int
		ppid     int
	}{{1, 60, []int{22600}, 0}, {1, 61, []int{22601}, 22600}, {1, 63, []int{22602}, 22600}, {2, 63, []int{22603, 1}, 22602}, {1, 64, []int{22604}, 22600}} {
		t := b.task(tk.ns, tk.pids, tk.ppid, make([]int, len(tk.pids)), make([]int, len(tk.pids)))
		t.SIDs[0], t.PGIDs[0] = 22600, 22600
		t.NS[pstree.UserNS] = tk.user
	}
	return &b.tr
}

// TestPlanUnmappedIDs: unmapped ids are kept from the builder (-1 to
// setresuid/setresgid), an unmapped user namespace gets no map write, and
// keptIDs accepts the restorer's ids when they are the image's only.
func TestPlanUnmappedIDs(t *testing.T) {
	for _, opt := range allOptions() {
		p := mustPlan(t, unmappedTree(), opt)
		for _, s := range p.Steps {
			if s.Op == OpUserMap && s.NS[pstree.UserNS] == 63 {
				t.Errorf("maps written for user ns 63, which has none: %s", p.describe(&s))
			}
		}
		for ti := 1; ti < 5; ti++ {
			uid, gid, _, sg, err := taskCreds(p, ti)
			keep := [3]uint32{keepID, keepID, keepID}
			wantUID := keep
			if ti == 4 {
				wantUID = [3]uint32{}
			}
			if err != nil || uid != wantUID || gid != keep || (ti > 1 && sg) {
				t.Errorf("task %d: uid %v gid %v setgroups=%v %v, want every id kept, no setgroups without a gid map", ti, uid, gid, sg, err)
			}
			if err := keptIDs(p, ti, [3]uint32{}, [3]uint32{}); err != nil {
				t.Errorf("task %d kept from a root restorer: %v", ti, err)
			}
			if err := keptIDs(p, ti, [3]uint32{}, [3]uint32{1000, 1000, 1000}); !errors.Is(err, ErrUnsupported) {
				t.Errorf("task %d kept from a gid-1000 restorer: %v, want ErrUnsupported", ti, err)
			}
		}
	}
}

func TestRestoreUnmappedIDs(t *testing.T) { scenarioCheck(t, unmappedTree, checkCreds) }

func TestRestoreUserNamespaces(t *testing.T) { scenarioCheck(t, userTree, checkCreds) }

// checkOwnersAndMaps checks through the host procfs: every non-ambient
// user namespace's uid_map and gid_map as the image has them, the owner
// of each task's pid, net and uts namespaces (NS_GET_USERNS) is the user
// namespace the image names, and every task's uids and gids.
func checkOwnersAndMaps(t *testing.T, tr *pstree.Tree, pay Payload) {
	t.Helper()
	userIno := map[pstree.NSID]uint64{}
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie || tk.NS[pstree.UserNS] == 0 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/user", tk.PID()), &st); err == nil {
			userIno[tk.NS[pstree.UserNS]] = st.Ino
		}
	}
	mapText := func(m []pstree.IDMapEntry) string {
		var b strings.Builder
		for _, e := range m {
			fmt.Fprintf(&b, "%d %d %d\n", e.Inside, e.Outside, e.Count)
		}
		return b.String()
	}
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			continue
		}
		if u := tr.Namespace(tk.NS[pstree.UserNS]); u != nil && !u.Ambient {
			for file, m := range map[string][]pstree.IDMapEntry{"uid_map": u.UIDMap, "gid_map": u.GIDMap} {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", tk.PID(), file))
				if got := strings.Join(strings.Fields(string(b)), " "); err != nil || got != strings.Join(strings.Fields(mapText(m)), " ") {
					t.Errorf("task %v: %s %q (%v), want %q", tk.PIDs, file, got, err, mapText(m))
				}
			}
		}
		for _, k := range []pstree.NSKind{pstree.PidNS, pstree.NetNS, pstree.UTSNS} {
			ns := tr.Namespace(tk.NS[k])
			if ns == nil || ns.Owner == 0 || userIno[ns.Owner] == 0 {
				continue
			}
			f, err := os.Open(fmt.Sprintf("/proc/%d/ns/%s", tk.PID(), k))
			if err != nil {
				t.Error(err)
				continue
			}
			fd, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_USERNS)
			f.Close()
			if err != nil {
				t.Errorf("task %v: NS_GET_USERNS of its %v ns: %v", tk.PIDs, k, err)
				continue
			}
			var st unix.Stat_t
			unix.Fstat(fd, &st)
			unix.Close(fd)
			if st.Ino != userIno[ns.Owner] {
				t.Errorf("task %v: its %v namespace is not owned by user namespace %d", tk.PIDs, k, ns.Owner)
			}
		}
		{
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", tk.PID()))
			c := expectedCreds(tk, pay)
			if got, want := procfs.StatusField(b, "Uid"), fmt.Sprintf("%d\t%d\t%d\t%d", c.UID, c.EUID, c.SUID, c.FSUID); strings.Join(strings.Fields(got), "\t") != want {
				t.Errorf("task %v: Uid %q, want %q", tk.PIDs, got, want)
			}
			if got, want := procfs.StatusField(b, "Gid"), fmt.Sprintf("%d\t%d\t%d\t%d", c.GID, c.EGID, c.SGID, c.FSGID); strings.Join(strings.Fields(got), "\t") != want {
				t.Errorf("task %v: Gid %q, want %q", tk.PIDs, got, want)
			}
		}
	}
}

// TestRestoreNetConfigFailureLeavesNothing: a route whose gateway no
// interface reaches makes the net configuration fail after every process
// exists; the restore reports the namespace and route and leaves nothing.
func TestRestoreNetConfigFailureLeavesNothing(t *testing.T) {
	needRoot(t)
	tr := place(t, sleepers(vethTree()))
	tr.Namespace(12).Routes[0].Gateway = netip.MustParseAddr("10.99.0.1")
	p, err := NewPlan(tr, Options{Features: features})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Execute(p, ExecOptions{})
	if err == nil || !strings.Contains(err.Error(), "net namespace 12: route") {
		t.Fatalf("err = %v, want the route's failure", err)
	}
	t.Logf("error: %v", err)
	assertGone(t, tr)
}

// nestedUserNS is the namespaces of userTree: pid namespaces 1 (the
// restorer's), 2 and 3 nested; user namespaces 60 (the restorer's), 61
// (0-65535 inside = 100000-165535 outside) and 62 inside it (0-999 inside =
// 101000-101999 outside, setgroups denied). Owners are the caller's.
func nestedUserNS() *tb {
	b := newTB().ns(2, 1, 1).ns(3, 2, 2)
	b.addNS(60, pstree.UserNS, true)
	u1 := b.addNS(61, pstree.UserNS, false)
	u1.Parent, u1.SetgroupsAllowed = 60, true
	u1.UIDMap = []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 65536}}
	u1.GIDMap = u1.UIDMap
	u2 := b.addNS(62, pstree.UserNS, false)
	u2.Parent = 61
	u2.UIDMap = []pstree.IDMapEntry{{Inside: 0, Outside: 101000, Count: 1000}}
	u2.GIDMap = u2.UIDMap
	return b
}

// TestPlanAmbientPidOwner plans testdata/ambient-owner, the dump of random
// history seed 549 (`histories 549 READY`, then `nsinit dump`): the init of
// a pid namespace that the host's user namespace owns, cloned by a task
// that entered another user namespace afterwards, and the init itself in
// that user namespace, without capability over its pid namespace's owner.
// The planner keeps the creator in the host's user namespace while it
// clones the init and its sibling and sets its pid_for_children, and the
// init there until it has written its namespace's cursors (user namespace
// stages, planner_userstage.go); the model checks every owner and
// capability. It used to be refused ("would be owned by user ns").
func TestPlanAmbientPidOwner(t *testing.T) {
	tr, err := imagefile.Read("testdata/ambient-owner")
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range allOptions() {
		if _, err := NewPlan(tr, opt); err != nil {
			t.Errorf("%+v: %v", opt, err)
		}
	}
}
