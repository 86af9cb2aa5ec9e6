package check

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

func tree() *pstree.Tree {
	return &pstree.Tree{
		Namespaces: []pstree.Namespace{
			{ID: 1, Kind: pstree.PidNS, Owner: 3},
			{ID: 2, Kind: pstree.PidNS, Parent: 1, Level: 1, Owner: 3},
			{ID: 3, Kind: pstree.UserNS},
			{ID: 4, Kind: pstree.NetNS, Owner: 3, Links: []pstree.NetLink{
				{Name: "lo", Kind: pstree.LinkLoopback, Up: true, MTU: 65536},
				{Name: "va", Kind: pstree.LinkVeth, Up: true, MTU: 1500, PeerNS: 5, PeerName: "vb",
					Addrs: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/24")}},
			}},
			{ID: 5, Kind: pstree.NetNS, Owner: 3, Links: []pstree.NetLink{
				{Name: "vb", Kind: pstree.LinkVeth, MTU: 1500, PeerNS: 4, PeerName: "va"},
				{Name: "vc", Kind: pstree.LinkVeth, MTU: 1500, PeerNS: 5, PeerName: "vd"},
				{Name: "vd", Kind: pstree.LinkVeth, MTU: 1500, PeerNS: 5, PeerName: "vc"},
			}, Routes: []pstree.NetRoute{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.7.0.1"), Dev: "vb", Table: 254}}},
			{ID: 6, Kind: pstree.UTSNS, Owner: 3, Hostname: "box"},
		},
		Tasks: []pstree.Task{
			{PIDs: []int{10}, PGIDs: []int{10}, SIDs: []int{10}, NS: pstree.NSSet{1, 1, 3, 4, 6}, Comm: "sh"},
			{PIDs: []int{11, 1}, PPID: 10, PGIDs: []int{10, 0}, SIDs: []int{10, 0}, NS: pstree.NSSet{2, 2, 3, 5},
				Threads: []pstree.Thread{{TIDs: []int{13, 3}, Comm: "worker"}}},
			{PIDs: []int{12, 2}, PPID: 11, PGIDs: []int{12, 2}, SIDs: []int{12, 2}, NS: pstree.NSSet{2, 2, 3, 5},
				State: pstree.Zombie, ExitStatus: 200 << 8, Comm: "sleep"},
		},
	}
}

// renumber gives every namespace another id, as a live read would.
func renumber(tr *pstree.Tree) *pstree.Tree {
	m := func(id pstree.NSID) pstree.NSID {
		if id == 0 {
			return 0
		}
		return 100 - id
	}
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		ns.ID, ns.Parent, ns.Owner = m(ns.ID), m(ns.Parent), m(ns.Owner)
		for j := range ns.Links {
			ns.Links[j].PeerNS = m(ns.Links[j].PeerNS)
		}
	}
	for i := range tr.Tasks {
		for k := range tr.Tasks[i].NS {
			tr.Tasks[i].NS[k] = m(tr.Tasks[i].NS[k])
		}
	}
	return tr
}

func TestCompareIdentical(t *testing.T) {
	if d := Compare(tree(), renumber(tree())); len(d) != 0 {
		t.Fatalf("differences in identical trees: %v", d)
	}
}

// TestCompareAgentThreads: an nsinit agent's threads are its Go runtime's
// and are not restored, so they are not compared; whether a task is an agent
// is.
func TestCompareAgentThreads(t *testing.T) {
	img, live := tree(), renumber(tree())
	img.Tasks[1].Agent, live.Tasks[1].Agent = true, true
	live.Tasks[1].Threads = []pstree.Thread{{TIDs: []int{40, 7}}, {TIDs: []int{41, 8}}}
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("agent threads compared: %v", d)
	}
	img.Tasks[1].Agent = false // an ordinary task: its threads count
	if d := Compare(img, live); len(d) != 2 {
		t.Fatalf("want the agent mark and the threads reported, got %v", d)
	}
}

// TestCompareLeftStopped: a tree left stopped by dump --leave-stopped
// matches its image with LeftStopped, and only that way; a task stopped in
// the image must still be stopped, a zombie still a zombie.
func TestCompareLeftStopped(t *testing.T) {
	img, live := tree(), renumber(tree())
	live.Tasks[0].State, live.Tasks[1].State = pstree.Stopped, pstree.Stopped
	live.Tasks[1].Threads[0].State = pstree.Stopped
	if d := Compare(img, live); len(d) != 3 {
		t.Fatalf("strict: want 2 states and the threads reported, got %v", d)
	}
	if d := CompareWith(img, live, Options{LeftStopped: true}); len(d) != 0 {
		t.Fatalf("left stopped: %v", d)
	}
	if live.Tasks[0].State != pstree.Stopped {
		t.Error("CompareWith changed the live tree")
	}
	img.Tasks[0].State, live.Tasks[0].State = pstree.Stopped, pstree.Live
	live.Tasks[2].State = pstree.Stopped
	d := CompareWith(img, live, Options{LeftStopped: true})
	if len(d) != 2 || d[0].What != "state" || d[1].What != "state" {
		t.Fatalf("a stopped task running and a zombie stopped: want 2 states reported, got %v", d)
	}
}

// TestCompareShellJob: restored with --shell-job, the root's session and
// group from outside the tree (500, a shell's) are the live root's (700);
// the tasks in them must be in the live root's, and nothing else changes.
func TestCompareShellJob(t *testing.T) {
	img, live := tree(), renumber(tree())
	img.Tasks[0].SIDs, img.Tasks[0].PGIDs = []int{500}, []int{500}
	img.Tasks[1].SIDs, img.Tasks[1].PGIDs = []int{500, 0}, []int{500, 0}
	live.Tasks[0].SIDs, live.Tasks[0].PGIDs = []int{700}, []int{701}
	live.Tasks[1].SIDs, live.Tasks[1].PGIDs = []int{700, 0}, []int{701, 0}
	if d := Compare(img, live); len(d) != 4 {
		t.Fatalf("strict: want 2 sessions and 2 groups reported, got %v", d)
	}
	if d := CompareWith(img, live, Options{ShellJob: true}); len(d) != 0 {
		t.Fatalf("shell job: %v", d)
	}
	if img.Tasks[0].SIDs[0] != 500 {
		t.Error("CompareWith changed the image")
	}
	// A task of the outside session that the live tree moved elsewhere is
	// still a difference, and so is the tree's own session.
	live.Tasks[1].SIDs = []int{12, 2}
	live.Tasks[2].SIDs = []int{700, 0}
	if d := CompareWith(img, live, Options{ShellJob: true}); len(d) != 2 {
		t.Fatalf("want both moved sessions reported, got %v", d)
	}
}

// TestCompareCommNotRecorded: an image without names (minor < 2) does not
// care what the live tasks are called.
func TestCompareCommNotRecorded(t *testing.T) {
	img, live := tree(), renumber(tree())
	img.Tasks[0].Comm, img.Tasks[2].Comm, img.Tasks[1].Threads[0].Comm = "", "", ""
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("names compared though the image has none: %v", d)
	}
}

func TestCompareFindsEachDifference(t *testing.T) {
	cases := map[string]struct {
		mutate func(*pstree.Tree)
		want   string
	}{
		"inner pid":   {func(tr *pstree.Tree) { tr.Tasks[2].PIDs[1] = 5 }, "pid 12: pids"},
		"ppid":        {func(tr *pstree.Tree) { tr.Tasks[2].PPID = 10 }, "pid 12: ppid"},
		"sid":         {func(tr *pstree.Tree) { tr.Tasks[1].SIDs[0] = 11 }, "pid 11: sids"},
		"pgid":        {func(tr *pstree.Tree) { tr.Tasks[2].PGIDs[1] = 1 }, "pid 12: pgids"},
		"state":       {func(tr *pstree.Tree) { tr.Tasks[2].State = pstree.Live }, "pid 12: state"},
		"exit status": {func(tr *pstree.Tree) { tr.Tasks[2].ExitStatus = 9 }, "pid 12: exit status"},
		"thread":      {func(tr *pstree.Tree) { tr.Tasks[1].Threads = nil }, "pid 11: threads"},
		"comm":        {func(tr *pstree.Tree) { tr.Tasks[2].Comm = "busybox" }, `pid 12: comm: image "sleep", live "busybox"`},
		"thread comm": {func(tr *pstree.Tree) { tr.Tasks[1].Threads[0].Comm = "w 2" }, `pid 11: comm of thread [13 3]: image "worker", live "w 2"`},
		"missing":     {func(tr *pstree.Tree) { tr.Tasks = tr.Tasks[:2] }, "pid 12: task: image"},
		"extra": {func(tr *pstree.Tree) {
			tr.Tasks = append(tr.Tasks, pstree.Task{PIDs: []int{14, 4}, PPID: 11, PGIDs: []int{14, 4}, SIDs: []int{14, 4}, NS: tr.Tasks[2].NS})
		}, "pid 14: task: image missing"},
		// Same number of namespaces, but pid 12 no longer shares pid 11's.
		"net shape": {func(tr *pstree.Tree) { tr.Tasks[2].NS[pstree.NetNS] = 4 }, "pid 12: net namespace"},
		"hostname":  {func(tr *pstree.Tree) { tr.Namespaces[5].Hostname = "other" }, "uts namespace of pid 10: hostname"},
		"address": {func(tr *pstree.Tree) {
			tr.Namespaces[3].Links[1].Addrs[0] = netip.MustParsePrefix("10.7.0.9/24")
		}, "net namespace of pid 10: interface va: addresses"},
		"mtu":       {func(tr *pstree.Tree) { tr.Namespaces[4].Links[0].MTU = 1400 }, "interface vb: image veth() up=false mtu=1500"},
		"link gone": {func(tr *pstree.Tree) { tr.Namespaces[3].Links = tr.Namespaces[3].Links[:1] }, "net namespace of pid 10: interfaces"},
		"route":     {func(tr *pstree.Tree) { tr.Namespaces[4].Routes = nil }, "net namespace of pid 11: routes"},
		// vb's peer is now in its own namespace: the pair crosses no more.
		"peer namespace": {func(tr *pstree.Tree) {
			tr.Namespaces[4].Links[0].PeerNS, tr.Namespaces[3].Links[1].PeerNS = 5, 4
		}, "interface vb: veth peer namespace"},
		"peer name": {func(tr *pstree.Tree) {
			tr.Namespaces[4].Links[1].PeerName, tr.Namespaces[4].Links[2].PeerName = "vc", "vd"
		}, "interface vc: veth peer"},
		"uid":    {func(tr *pstree.Tree) { tr.Tasks[1].Creds.UID = 1000 }, "pid 11: uid: image 0, live 1000"},
		"groups": {func(tr *pstree.Tree) { tr.Tasks[0].Creds.Groups = []uint32{5} }, "pid 10: groups: image [], live [5]"},
		// a zombie's credentials count too
		"cap_amb": {func(tr *pstree.Tree) { tr.Tasks[2].Creds.CapAmb = 1 << 13 }, "pid 12: cap_amb: image 0000000000000000, live 0000000000002000"},
		"owner": {func(tr *pstree.Tree) {
			tr.Namespaces = append(tr.Namespaces, pstree.Namespace{ID: 7, Kind: pstree.UserNS, Parent: 3})
			tr.Namespaces[1].Owner = 7
		}, "pid namespace of pid 11: owner"},
	}
	for name, c := range cases {
		live := tree()
		c.mutate(live)
		diffs := Compare(tree(), renumber(live))
		var all []string
		for _, d := range diffs {
			all = append(all, d.String())
		}
		if !strings.Contains(strings.Join(all, "\n"), c.want) {
			t.Errorf("%s: want a difference %q, got %q", name, c.want, all)
		}
	}
}

// TestCompareCaps: each capability set that differs is reported by its
// name, image and live value in hex, and nothing else is.
func TestCompareCaps(t *testing.T) {
	img := tree()
	for i := range img.Tasks {
		img.Tasks[i].Creds = pstree.Creds{UID: 1000, EUID: 1000, SUID: 1000, FSUID: 1000,
			CapInh: 0x2000, CapPrm: 0x2000, CapEff: 0x2000, CapBnd: 0x1ffffffffff, CapAmb: 0x2000}
	}
	live := renumber(tree())
	for i := range live.Tasks {
		live.Tasks[i].Creds = img.Tasks[i].Creds
	}
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("same credentials reported: %v", d)
	}
	lc := &live.Tasks[1].Creds
	lc.CapBnd &^= 1 << 21 // cap_sys_admin
	lc.CapPrm, lc.CapEff, lc.CapAmb, lc.CapInh = 0, 0, 0, 0x2001
	want := []string{
		"pid 11: cap_inh: image 0000000000002000, live 0000000000002001",
		"pid 11: cap_prm: image 0000000000002000, live 0000000000000000",
		"pid 11: cap_eff: image 0000000000002000, live 0000000000000000",
		"pid 11: cap_bnd: image 000001ffffffffff, live 000001ffffdfffff",
		"pid 11: cap_amb: image 0000000000002000, live 0000000000000000",
	}
	var got []string
	for _, d := range Compare(img, live) {
		got = append(got, d.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestCheckLiveTree dumps a real tree, checks it against itself, then
// changes it and expects the change to be reported.
func TestCheckLiveTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create pid namespaces")
	}
	cmd := exec.Command("/bin/busybox", "sh", "-c",
		`busybox sh -c 'exit 3' & unshare -fp busybox sh -c 'busybox sleep 1000 & busybox sleep 1000 & wait' & exec busybox sleep 1000`)
	root := startTree(t, cmd)
	var tr *pstree.Tree
	deadline := time.Now().Add(10 * time.Second)
	for {
		live, err := ReadLive(root)
		if err == nil && len(live.Tasks) == 6 && settled(live) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree not ready: %v %d", err, len(live.Tasks))
		}
		time.Sleep(50 * time.Millisecond)
	}
	tr, err := dump.Dump(root, dump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	img, err := imagefile.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	live, err := ReadLive(root)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("fresh dump differs from the live tree: %v", d)
	}
	// Kill one inner sleeper: the tree loses a task.
	victim := img.Tasks[len(img.Tasks)-1].PIDs[0]
	unix.Kill(victim, unix.SIGKILL)
	for time.Now().Before(deadline) {
		if live, err = ReadLive(root); err == nil && live.Task(victim) == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := Compare(img, live)
	if len(d) != 1 || d[0].PID != victim || d[0].What != "task" {
		t.Fatalf("after killing %d: %v", victim, d)
	}
}

// settled says whether every live task of tr is blocked in the call it
// stays in (wait4, a shell's sigsuspend, a sleep): past its exec, so its command name and
// executable no longer change. Six tasks alone are not enough: a task
// listed between its fork and its exec has its parent's name.
func settled(tr *pstree.Tree) bool {
	procs := procfs.New("")
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			continue
		}
		switch nr, _ := procs.Syscall(tk.PIDs[0]); nr {
		case unix.SYS_WAIT4, unix.SYS_RT_SIGSUSPEND, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_NANOSLEEP:
		default:
			return false
		}
	}
	return true
}

// TestCheckLiveNet: a net and uts namespace with a veth pair inside it is
// checked equal to its dump, then an address, a route and the hostname
// change and each is reported.
func TestCheckLiveNet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	cmd := exec.Command("unshare", "-n", "-u", "/bin/busybox", "sh", "-c",
		`busybox hostname alpha; busybox sleep 1000 & exec busybox sleep 1000`)
	root := startTree(t, cmd)
	deadline := time.Now().Add(10 * time.Second)
	for {
		live, err := ReadLive(root)
		if err == nil && len(live.Tasks) == 2 && live.Namespace(live.Tasks[0].NS[pstree.UTSNS]).Hostname == "alpha" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	in := func(args ...string) {
		t.Helper()
		full := append([]string{"-t", fmt.Sprint(root), "-n", "-u", "--"}, args...)
		if out, err := exec.Command("nsenter", full...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	in("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
	in("ip", "addr", "add", "10.79.0.1/24", "dev", "va")
	in("ip", "link", "set", "va", "up")
	in("ip", "link", "set", "vb", "up")
	in("ip", "route", "add", "10.80.0.0/16", "via", "10.79.0.2")
	tr, err := dump.Dump(root, dump.Options{})
	if err != nil {
		t.Fatal(err)
	}
	live, err := ReadLive(root)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(tr, live); len(d) != 0 {
		t.Fatalf("fresh dump differs from the live tree: %v", d)
	}
	in("ip", "addr", "add", "10.79.0.9/24", "dev", "va")
	in("ip", "route", "del", "10.80.0.0/16")
	in("busybox", "hostname", "beta")
	if live, err = ReadLive(root); err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, d := range Compare(tr, live) {
		all = append(all, d.String())
	}
	for _, want := range []string{"interface va: addresses", ": routes", "hostname/domainname: image alpha/"} {
		if !strings.Contains(strings.Join(all, "\n"), want) {
			t.Errorf("want a difference %q, got %q", want, all)
		}
	}
}

// startTree starts cmd (a tree-building script) in a session of its own and
// returns its pid; the cleanup kills what is left of the tree.
func startTree(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	t.Cleanup(func() {
		if live, err := ReadLive(root); err == nil {
			for i := len(live.Tasks) - 1; i >= 0; i-- {
				unix.Kill(live.Tasks[i].PIDs[0], unix.SIGKILL)
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	return root
}

// TestCompareParentThread: which of its parent's threads a task is a child
// of is compared when both sides record it (images of minor >= 4 and
// kernels with the children files), and reported by tid.
func TestCompareParentThread(t *testing.T) {
	img, live := tree(), renumber(tree())
	img.Tasks[2].ParentTID, live.Tasks[2].ParentTID = 13, 13
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("same parent thread reported: %v", d)
	}
	live.Tasks[2].ParentTID = 11 // the leader
	d := Compare(img, live)
	if len(d) != 1 || d[0].String() != "pid 12: parent thread: image 13, live 11" {
		t.Fatalf("want the parent thread reported, got %v", d)
	}
	img.Tasks[2].ParentTID = 0 // not recorded
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("parent thread compared though the image has none: %v", d)
	}
}

// TestCompareSubreapers: the child subreaper flag is compared only when
// both trees record it (an image of minor < 4 or a dump without eBPF has
// none).
func TestCompareSubreapers(t *testing.T) {
	img, live := tree(), renumber(tree())
	img.MarkSubreapers(map[int]bool{11: true})
	live.MarkSubreapers(map[int]bool{})
	d := Compare(img, live)
	if len(d) != 1 || d[0].String() != "pid 11: child subreaper: image true, live false" {
		t.Fatalf("want the flag reported, got %v", d)
	}
	live.MarkSubreapers(map[int]bool{11: true, 12: true}) // 12 is a zombie: not recorded
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("same flags reported: %v", d)
	}
	live.SubreapersRecorded = false
	live.Tasks[1].ChildSubreaper = false
	if d := Compare(img, live); len(d) != 0 {
		t.Fatalf("compared though the live tree has no flags: %v", d)
	}
}
