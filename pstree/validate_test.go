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
			{PIDs: []int{12, 2}, PPID: 11, PGIDs: []int{12, 2}, SIDs: []int{12, 2}, NS: set(2),
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
		"thread levels":    func(tr *Tree) { tr.Tasks[1].Threads[0].TIDs = []int{13} },
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
		"user cycle": func(tr *Tree) {
			tr.Namespaces = append(tr.Namespaces, Namespace{ID: 4, Kind: UserNS, Parent: 3})
			tr.Namespaces[2].Parent = 4
		},
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
