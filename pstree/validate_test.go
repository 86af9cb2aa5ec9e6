package pstree

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func validTree() *Tree {
	set := func(pid NSID) NSSet { return NSSet{pid, pid, 3} }
	return &Tree{
		Namespaces: []Namespace{
			{ID: 1, Kind: PidNS, Owner: 3},
			{ID: 2, Kind: PidNS, Parent: 1, Level: 1, Owner: 3},
			{ID: 3, Kind: UserNS},
			{ID: 4, Kind: NetNS, Links: []NetLink{
				{Name: "lo", Kind: LinkLoopback, Up: true},
				{Name: "va", Kind: LinkVeth, PeerNS: 5, PeerName: "vb",
					Addrs: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/24")}},
			}, Routes: []NetRoute{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.7.0.2"), Dev: "va"}}},
			{ID: 5, Kind: NetNS, Links: []NetLink{{Name: "vb", Kind: LinkVeth, PeerNS: 4, PeerName: "va"}}},
			{ID: 6, Kind: UTSNS, Hostname: "box"},
		},
		Tasks: []Task{
			{PIDs: []int{10}, PGIDs: []int{10}, SIDs: []int{10}, NS: set(1)},
			{PIDs: []int{11, 1}, PPID: 10, PGIDs: []int{10, 0}, SIDs: []int{10, 0}, NS: set(2),
				Threads: []Thread{{TIDs: []int{13, 3}}}},
			{PIDs: []int{12, 2}, PPID: 11, ParentTID: 13, PGIDs: []int{12, 2}, SIDs: []int{12, 2}, NS: set(2),
				State: Zombie, ExitStatus: 9},
		},
	}
}

func TestValidateAccepts(t *testing.T) {
	if err := Validate(validTree()); err != nil {
		t.Fatal(err)
	}
}

// TestValidateSessionZero: the children of a machine's init that never
// called setsid are in the kernel's session and group 0, which no process
// leads (seen in the test VM).
func TestValidateSessionZero(t *testing.T) {
	tr := validTree()
	tr.Tasks[0].PGIDs[0], tr.Tasks[0].SIDs[0] = 0, 0
	if err := Validate(tr); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]func(tr *Tree){
		"no tasks":            func(tr *Tree) { tr.Tasks = nil },
		"child before parent": func(tr *Tree) { tr.Tasks[1], tr.Tasks[2] = tr.Tasks[2], tr.Tasks[1] },
		"root ppid":           func(tr *Tree) { tr.Tasks[0].PPID = 1 },
		"dup inner pid":       func(tr *Tree) { tr.Tasks[2].PIDs[1] = 1 },
		"dup tid":             func(tr *Tree) { tr.Tasks[1].Threads[0].TIDs[1] = 2 },
		"zero pid":            func(tr *Tree) { tr.Tasks[2].PIDs[0] = 0 },
		"level mismatch":      func(tr *Tree) { tr.Tasks[2].NS[PidNS] = 1 },
		"missing ns":          func(tr *Tree) { tr.Tasks[0].NS[NetNS] = 99 },
		"wrong kind":          func(tr *Tree) { tr.Tasks[0].NS[UserNS] = 1 },
		"owner not user":      func(tr *Tree) { tr.Namespaces[1].Owner = 1 },
		"parent level":        func(tr *Tree) { tr.Namespaces[1].Level = 2 },
		"dup ns id":           func(tr *Tree) { tr.Namespaces[2].ID = 1 },
		"pgid length":         func(tr *Tree) { tr.Tasks[1].PGIDs = []int{10} },
		"status on live":      func(tr *Tree) { tr.Tasks[1].ExitStatus = 256 },
		"bad status":          func(tr *Tree) { tr.Tasks[2].ExitStatus = 0x17f },
		"too deep": func(tr *Tree) {
			tr.Tasks[0].PIDs = make([]int, MaxLevel+2)
		},
		"thread levels":        func(tr *Tree) { tr.Tasks[1].Threads[0].TIDs = []int{13} },
		"root parent tid":      func(tr *Tree) { tr.Tasks[0].ParentTID = 10 },
		"subreaper unrecorded": func(tr *Tree) { tr.Tasks[1].ChildSubreaper = true },
		"parent tid":           func(tr *Tree) { tr.Tasks[2].ParentTID = 12 }, // its own pid, not its parent's
		"mounts on net ns":     func(tr *Tree) { tr.Namespaces[3].Mounts = []Mount{{Point: "/", Root: "/", FSType: "ext4"}} },
		"mount escapes": func(tr *Tree) {
			tr.Namespaces = append(tr.Namespaces, Namespace{ID: 7, Kind: MntNS, Mounts: []Mount{{Point: "/a/../..", Root: "/", FSType: "tmpfs"}}})
		},
		"bind outside": func(tr *Tree) {
			tr.Namespaces = append(tr.Namespaces, Namespace{ID: 7, Kind: MntNS, Mounts: []Mount{
				{Point: "/proc", Root: "/sys", FSType: "proc"}, {Point: "/x", Root: "/net", FSType: "proc", BindOf: 1}}})
		},
		"other's thread":   func(tr *Tree) { tr.Tasks[1].ParentTID = 13 },
		"long comm":        func(tr *Tree) { tr.Tasks[0].Comm = "sixteen-bytes-xx" },
		"NUL in comm":      func(tr *Tree) { tr.Tasks[2].Comm = "a\x00b" },
		"thread comm":      func(tr *Tree) { tr.Tasks[1].Threads[0].Comm = strings.Repeat("t", 16) },
		"hostname on net":  func(tr *Tree) { tr.Namespaces[3].Hostname = "x" },
		"long hostname":    func(tr *Tree) { tr.Namespaces[5].Hostname = strings.Repeat("h", 65) },
		"links on ambient": func(tr *Tree) { tr.Namespaces[3].Ambient = true },
		"links on uts":     func(tr *Tree) { tr.Namespaces[5].Links = tr.Namespaces[3].Links },
		"dup link":         func(tr *Tree) { tr.Namespaces[3].Links[1].Name = "lo" },
		"long link name":   func(tr *Tree) { tr.Namespaces[3].Links[0].Name = "abcdefghijklmnop" },
		"peer on lo":       func(tr *Tree) { tr.Namespaces[3].Links[0].PeerNS = 4 },
		"peer not back":    func(tr *Tree) { tr.Namespaces[4].Links[0].PeerName = "lo" },
		"peer missing":     func(tr *Tree) { tr.Namespaces[3].Links[1].PeerName = "nope" },
		"peer ns not net":  func(tr *Tree) { tr.Namespaces[3].Links[1].PeerNS = 6 },
		"route dev":        func(tr *Tree) { tr.Namespaces[3].Routes[0].Dev = "eth9" },
		"route family": func(tr *Tree) {
			tr.Namespaces[3].Routes[0].Gateway = netip.MustParseAddr("fe80::1")
		},
		"route no dst": func(tr *Tree) { tr.Namespaces[3].Routes[0].Dst = netip.Prefix{} },
	}
	for name, mutate := range cases {
		tr := validTree()
		mutate(tr)
		err := Validate(tr)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		} else if strings.Contains(err.Error(), "%!") {
			t.Errorf("%s: bad format: %v", name, err)
		}
	}
}

// TestValidateRefusesHostile: each hostile image is refused with an error
// that names the field and the task or namespace, never a panic.
func TestValidateRefusesHostile(t *testing.T) {
	userChain := func(tr *Tree, parents ...NSID) {
		// user namespaces 10, 11, ... whose parents are the given ids.
		for i, p := range parents {
			tr.Namespaces = append(tr.Namespaces, Namespace{ID: NSID(10 + i), Kind: UserNS, Parent: p, Owner: p})
		}
	}
	cases := []struct {
		name   string
		mutate func(tr *Tree)
		want   string
	}{
		{"dangling user chain", func(tr *Tree) { userChain(tr, 11, 12) }, "user namespace 11: parent 12 missing"},
		{"user cycle", func(tr *Tree) { userChain(tr, 11, 12, 10) }, "user namespace 10: parent chain has a cycle"},
		{"user self parent", func(tr *Tree) { userChain(tr, 10) }, "user namespace 10: parent chain has a cycle"},
		{"user chain too deep", func(tr *Tree) {
			parents := []NSID{3} // 3 <- 10 <- 11 ... <- 42: 34 deep
			for i := range MaxLevel {
				parents = append(parents, NSID(10+i))
			}
			userChain(tr, parents...)
		}, "user namespace 42: 34 nested user namespaces, more than 33"},
		{"dangling pid parent", func(tr *Tree) { tr.Namespaces[1].Parent = 9 }, "pid namespace 2: parent 9 missing"},
		{"dangling owner", func(tr *Tree) { tr.Namespaces[3].Owner = 9 }, "net namespace 4: owner 9 missing"},
		{"user owner not parent", func(tr *Tree) { userChain(tr, 3); tr.Namespaces[6].Parent = 0 }, "user namespace 10: owner 3 is not its parent 0"},
		{"NUL in argv", func(tr *Tree) { tr.Tasks[1].Argv = []string{"sh", "-c", "rm\x00-rf"} }, "task 1 (pid 11): argv[2]: contains a NUL byte"},
		{"NUL in env", func(tr *Tree) { tr.Tasks[0].Env = []string{"A=1\x00B=2"} }, "task 0 (pid 10): env[0]: contains a NUL byte"},
		{"NUL in exe", func(tr *Tree) { tr.Tasks[0].Exe = "/bin/true\x00/x" }, "task 0 (pid 10): exe: contains a NUL byte at offset 9"},
		{"NUL in cwd", func(tr *Tree) { tr.Tasks[0].Cwd = "/tmp\x00" }, "task 0 (pid 10): cwd: contains a NUL byte"},
		{"NUL in comm", func(tr *Tree) { tr.Tasks[0].Comm = "a\x00" }, "task 0 (pid 10): command name"},
		{"NUL in hostname", func(tr *Tree) { tr.Namespaces[5].Hostname = "b\x00x" }, "uts namespace 6: hostname: contains a NUL byte"},
		{"NUL in link", func(tr *Tree) { tr.Namespaces[3].Links[0].Name = "l\x00" }, "net namespace 4: link 0: bad name"},
		{"long exe", func(tr *Tree) { tr.Tasks[0].Exe = "/" + strings.Repeat("x", MaxPath) }, "task 0 (pid 10): exe: 4097 bytes, more than 4096"},
		{"root not / nor elsewhere", func(tr *Tree) { tr.Tasks[1].Root = "/srv/jail" }, `task 1 (pid 11): root "/srv/jail" is not the dumper's root, but root_elsewhere is not set`},
		{"huge argv", func(tr *Tree) { tr.Tasks[0].Argv = []string{strings.Repeat("a", MaxArgBytes)} }, "task 0 (pid 10): argv and env longer than"},
		{"uid -1", func(tr *Tree) { tr.Tasks[0].Creds.EUID = InvalidID }, "task 0 (pid 10): euid 4294967295 is not a valid id"},
		{"group -1", func(tr *Tree) { tr.Tasks[0].Creds.Groups = []uint32{0, InvalidID} }, "task 0 (pid 10): groups[1]"},
		{"ambient not permitted", func(tr *Tree) { tr.Tasks[0].Creds.CapInh, tr.Tasks[0].Creds.CapAmb = 1, 3 }, "task 0 (pid 10): ambient capabilities 0x3 neither"},
		{"too many groups", func(tr *Tree) { tr.Tasks[0].Creds.Groups = make([]uint32, MaxGroups+1) }, "65537 supplementary groups"},
		{"map overflow", func(tr *Tree) { tr.Namespaces[2].UIDMap = []IDMapEntry{{Inside: 1, Outside: 0, Count: InvalidID}} }, "user namespace 3: uid_map: line 0 (1 0 4294967295): range overflows"},
		{"map empty range", func(tr *Tree) { tr.Namespaces[2].GIDMap = []IDMapEntry{{Count: 0}} }, "user namespace 3: gid_map: line 0: empty range"},
		{"map overlap", func(tr *Tree) {
			tr.Namespaces[2].UIDMap = []IDMapEntry{{Inside: 0, Outside: 1000, Count: 10}, {Inside: 5, Outside: 5000, Count: 1}}
		}, "uid_map: inside ranges at 0 and 5 overlap"},
		{"map lines", func(tr *Tree) {
			for i := range MaxMapLines + 1 {
				tr.Namespaces[2].UIDMap = append(tr.Namespaces[2].UIDMap, IDMapEntry{Inside: uint32(i), Outside: uint32(i), Count: 1})
			}
		}, "uid_map: 341 lines, more than 340"},
		{"pid too big", func(tr *Tree) { tr.Tasks[2].PIDs[0] = MaxPID + 1 }, "task 2 (pid 4194305): pid 4194305 at level 0 out of range 1..4194304"},
		{"negative pid", func(tr *Tree) { tr.Tasks[2].PIDs[1] = -3 }, "task 2 (pid 12): pid -3 at level 1 out of range"},
		{"tid too big", func(tr *Tree) { tr.Tasks[1].Threads[0].TIDs[1] = MaxPID + 1 }, "task 1 (pid 11) thread 0: pid 4194305 at level 1 out of range"},
		{"pgid too big", func(tr *Tree) { tr.Tasks[1].PGIDs[0] = MaxPID + 1 }, "task 1 (pid 11): pgid 4194305 or sid 10 at level 0 out of range"},
		{"last pid too big", func(tr *Tree) { tr.Namespaces[0].LastPID = MaxPID + 1 }, "namespace 1: last pid 4194305 out of range"},
		{"level too deep", func(tr *Tree) { tr.Namespaces[1].Level = MaxLevel + 1 }, "namespace 2: level 33 out of range 0..32"},
		{"too many levels", func(tr *Tree) { tr.Tasks[0].PIDs = make([]int, MaxLevel+2) }, "task 0: 34 pid levels, want 1..33"},
		{"signal out of range", func(tr *Tree) { tr.Tasks[2].ExitStatus = 65 }, "task 2 (pid 12): impossible exit status 0x41"},
		{"exit code out of range", func(tr *Tree) { tr.Tasks[2].ExitStatus = 256 << 8 }, "task 2 (pid 12): impossible exit status 0x10000"},
		{"too many tasks", func(tr *Tree) { tr.Tasks = make([]Task, MaxTasks+1) }, "65537 tasks, more than 65536"},
		{"too many namespaces", func(tr *Tree) { tr.Namespaces = make([]Namespace, MaxNamespaces+1) }, "65537 namespaces, more than 65536"},
		{"too many threads", func(tr *Tree) { tr.Tasks[1].Threads = make([]Thread, MaxThreads+1) }, "more than 65536 threads"},
	}
	for _, c := range cases {
		tr := validTree()
		c.mutate(tr)
		err := Validate(tr)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInvalid with %q", c.name, err, c.want)
		}
	}
}

// TestValidateDanglingChainNoPanic: a user namespace chain 1 -> 2 -> 3
// with 3 absent used to dereference nil when the namespace map happened to
// be walked from its far end; refused the same way on every run now.
func TestValidateDanglingChainNoPanic(t *testing.T) {
	for range 100 {
		tr := validTree()
		tr.Namespaces = append(tr.Namespaces,
			Namespace{ID: 10, Kind: UserNS, Parent: 11, Owner: 11},
			Namespace{ID: 11, Kind: UserNS, Parent: 12, Owner: 12})
		if err := Validate(tr); err == nil || !strings.Contains(err.Error(), "user namespace 11: parent 12 missing") {
			t.Fatalf("got %v", err)
		}
	}
}

// TestValidateDeepestUserChain: 33 user namespaces (the initial one and 32
// nested) are what the kernel allows, whatever the order they are listed in.
func TestValidateDeepestUserChain(t *testing.T) {
	tr := validTree()
	for i := MaxLevel; i >= 1; i-- { // children first: depths come from below
		p := NSID(10 + i - 1)
		if i == 1 {
			p = 3
		}
		tr.Namespaces = append(tr.Namespaces, Namespace{ID: NSID(10 + i), Kind: UserNS, Parent: p, Owner: p})
	}
	tr.Namespaces = append(tr.Namespaces, Namespace{ID: 10, Kind: UserNS}) // unused, at depth 1
	if err := Validate(tr); err != nil {
		t.Fatal(err)
	}
}

// TestValidateKeepsIdentityMap: the whole-range map of the initial user
// namespace, 0 0 4294967295, is the largest valid one.
func TestValidateKeepsIdentityMap(t *testing.T) {
	tr := validTree()
	tr.Namespaces[2].UIDMap = []IDMapEntry{{Inside: 0, Outside: 0, Count: InvalidID}}
	tr.Namespaces[2].GIDMap = []IDMapEntry{{Inside: 0, Outside: 1000, Count: 1}, {Inside: 1, Outside: 100000, Count: 65536}}
	tr.Tasks[0].Root = "/"
	if err := Validate(tr); err != nil {
		t.Fatal(err)
	}
}
