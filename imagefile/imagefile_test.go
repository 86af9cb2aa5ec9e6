package imagefile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/pstree"
	"google.golang.org/protobuf/proto"
)

// sample is a small but complete tree: a root at level 0, the init of a
// level-1 pid namespace owned by a child user namespace, a zombie and a
// thread inside, and a group whose leader lives outside.
func sample() *pstree.Tree {
	ns := func(id pstree.NSID, k pstree.NSKind) pstree.Namespace {
		return pstree.Namespace{ID: id, Kind: k}
	}
	outer := pstree.NSSet{1, 1, 3, 5, 6, 7, 8, 9, 10}
	inner := pstree.NSSet{2, 2, 4, 5, 6, 7, 8, 9, 10}
	return &pstree.Tree{
		Checked: true, SubreapersRecorded: true,
		Namespaces: []pstree.Namespace{
			{ID: 1, Kind: pstree.PidNS, Owner: 3, LastPID: 400},
			{ID: 2, Kind: pstree.PidNS, Parent: 1, Owner: 4, Level: 1},
			{ID: 3, Kind: pstree.UserNS, UIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 4294967295}}, GIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 4294967295}}, SetgroupsAllowed: true},
			{ID: 4, Kind: pstree.UserNS, Parent: 3, Owner: 3, UIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 65536}}, OwnerUID: 1000},
			{ID: 5, Kind: pstree.NetNS, Owner: 3, Links: []pstree.NetLink{
				{Name: "lo", Kind: pstree.LinkLoopback, Up: true, MTU: 65536,
					Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("::1/128")}},
				{Name: "va", Kind: pstree.LinkVeth, KindName: "veth", Up: true, MTU: 1500,
					MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, Addrs: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/24")},
					PeerNS: 5, PeerName: "vb"},
				{Name: "vb", Kind: pstree.LinkVeth, KindName: "veth", MTU: 1500, PeerNS: 5, PeerName: "va"},
			}, Routes: []pstree.NetRoute{
				{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("10.7.0.2"), Dev: "va",
					Table: 254, Protocol: 3, Type: 1},
				{Dst: netip.MustParsePrefix("fd00::/64"), Src: netip.MustParseAddr("fd00::1"), Dev: "va", Table: 254,
					Protocol: 4, Scope: 253, Type: 1, Metric: 1024},
			}},
			{ID: 6, Kind: pstree.UTSNS, Hostname: "box", Domainname: "(none)"},
			ns(7, pstree.IPCNS), {ID: 8, Kind: pstree.MntNS, Mounts: []pstree.Mount{
				{Point: "/", Root: "/srv/rootfs", FSType: "ext4", Source: "/dev/sda1", Options: "rw,relatime", SuperOptions: "rw"},
				{Point: "/proc", Root: "/", FSType: "proc", Source: "proc", Options: "rw,nosuid,nodev,noexec,relatime", SuperOptions: "rw", PidNS: 2},
				{Point: "/proc/sys", Root: "/sys", FSType: "proc", Source: "proc", Options: "ro,relatime", SuperOptions: "rw", BindOf: 2},
				{Point: "/dev", Root: "/", FSType: "tmpfs", Source: "tmpfs", Options: "rw,nosuid", SuperOptions: "rw,size=65536k,mode=755"},
				{Point: "/etc/hosts", Root: "/var/lib/hosts", FSType: "ext4", Source: "/dev/sda1", Options: "rw", SuperOptions: "rw", HostPath: "/var/lib/hosts"},
			}}, ns(9, pstree.CgroupNS), {ID: 10, Kind: pstree.TimeNS, Ambient: true},
		},
		Tasks: []pstree.Task{
			{PIDs: []int{100}, PGIDs: []int{100}, SIDs: []int{100}, NS: outer,
				Creds: pstree.Creds{Groups: []uint32{0, 10}, CapEff: 0x1ffffffffff},
				Comm:  " sh\n(x)\xff", Exe: "/bin/busybox", Argv: []string{"sh", "-c", "x\xff"}, Env: []string{"A=1"}, Cwd: "/", Root: "/"},
			{PIDs: []int{101, 1}, PPID: 100, PGIDs: []int{100, 0}, SIDs: []int{100, 0}, NS: inner, Agent: true, ChildSubreaper: true,
				Threads: []pstree.Thread{{TIDs: []int{103, 3}, State: pstree.Stopped, Comm: "worker"}}},
			{PIDs: []int{102, 2}, PPID: 101, ParentTID: 103, PGIDs: []int{102, 2}, SIDs: []int{102, 2}, NS: inner,
				State: pstree.Zombie, ExitStatus: 200 << 8},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	want := sample()
	b, err := Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, want)
	}
	dir := t.TempDir()
	if err := Write(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err = Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("Write/Read round trip differs")
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"empty":     {nil, ErrFormat},
		"magic":     {mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrFormat},
		"truncated": {good[:len(good)-3], ErrFormat},
		"checksum":  {mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrFormat},
		"address length": {withHeader(func() []byte {
			img := toProto(sample())
			img.Namespaces[4].Links[1].Addrs[0].Ip = []byte{10, 7, 0}
			b, _ := proto.Marshal(img)
			return b
		}()), ErrFormat},
		"major": {mut(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[8:], pstree.FormatMajor+1)
			return b
		}), ErrVersion},
	}
	for name, c := range cases {
		_, err := Decode(c.b)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	// A newer minor version is read.
	b := mut(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[10:], pstree.FormatMinor+1); return b })
	if _, err := Decode(b); err != nil {
		t.Errorf("newer minor: %v", err)
	}
}

func TestEncodeRejectsInvalid(t *testing.T) {
	tr := sample()
	tr.Tasks[2].PPID = 999
	if _, err := Encode(tr); !errors.Is(err, pstree.ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

// FuzzDecode feeds arbitrary bytes to Decode twice: as a whole file, and as
// a payload behind a correct header (so the fuzzer gets past the checksum
// into the protobuf and the validation). Seeds: testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	good, err := Encode(sample())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[HeaderSize:])
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, withHeader(b)} {
			tr, err := Decode(in)
			if err != nil {
				continue
			}
			// Whatever decodes must be valid and encode again.
			if _, err := Encode(tr); err != nil {
				t.Fatalf("decoded tree does not encode: %v", err)
			}
		}
	})
}

func withHeader(payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[8:], pstree.FormatMajor)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[16:], crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

// TestWriteFuzzSeeds regenerates the committed seed corpus when
// NSINIT_WRITE_SEEDS=1 (after a format change).
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("NSINIT_WRITE_SEEDS") != "1" {
		t.Skip("set NSINIT_WRITE_SEEDS=1 to rewrite testdata/fuzz/FuzzDecode")
	}
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	v2 := append([]byte(nil), good...)
	binary.LittleEndian.PutUint16(v2[8:], pstree.FormatMajor+1)
	seeds := map[string][]byte{
		"valid":      good,
		"payload":    good[HeaderSize:],
		"truncated":  good[:len(good)/2],
		"header":     good[:HeaderSize],
		"major2":     v2,
		"bad-parent": withHeader(func() []byte { tr := sample(); tr.Tasks[2].PPID = 7; return mustMarshal(t, tr) }()),
		"deep":       withHeader(func() []byte { tr := sample(); tr.Namespaces[1].Level = 40; return mustMarshal(t, tr) }()),
	}
	for name, tr := range hostileTrees() {
		seeds[name] = withHeader(mustMarshal(t, tr))
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// hostileTrees are images that must be refused (issue #11), committed as
// seeds of FuzzDecode, which restorer.FuzzPlan reads too: each is one field
// away from sample().
func hostileTrees() map[string]*pstree.Tree {
	mut := func(f func(tr *pstree.Tree)) *pstree.Tree { tr := sample(); f(tr); return tr }
	return map[string]*pstree.Tree{
		// user namespace 4's parent 3 -> 11 -> 12, 12 absent
		"dangling-userns": mut(func(tr *pstree.Tree) {
			tr.Namespaces[2].Parent, tr.Namespaces[2].Owner = 11, 11
			tr.Namespaces = append(tr.Namespaces, pstree.Namespace{ID: 11, Kind: pstree.UserNS, Parent: 12, Owner: 12})
		}),
		"userns-cycle": mut(func(tr *pstree.Tree) { tr.Namespaces[2].Parent, tr.Namespaces[2].Owner = 4, 4 }),
		"nul-argv":     mut(func(tr *pstree.Tree) { tr.Tasks[0].Argv[1] = "-c\x00rm -rf /" }),
		"nul-env":      mut(func(tr *pstree.Tree) { tr.Tasks[0].Env[0] = "A=1\x00LD_PRELOAD=/x" }),
		"nul-exe":      mut(func(tr *pstree.Tree) { tr.Tasks[0].Exe = "/bin/busybox\x00.evil" }),
		"nul-cwd":      mut(func(tr *pstree.Tree) { tr.Tasks[0].Cwd = "/\x00tmp" }),
		"nul-comm":     mut(func(tr *pstree.Tree) { tr.Tasks[0].Comm = "s\x00h" }),
		"root-jail":    mut(func(tr *pstree.Tree) { tr.Tasks[0].Root = "/srv/jail" }),
		"uid-max":      mut(func(tr *pstree.Tree) { tr.Tasks[0].Creds.UID = pstree.InvalidID }),
		"pid-max":      mut(func(tr *pstree.Tree) { tr.Tasks[2].PIDs[1] = pstree.MaxPID + 1 }),
		"map-overflow": mut(func(tr *pstree.Tree) {
			tr.Namespaces[3].UIDMap[0].Inside = 1 << 31
			tr.Namespaces[3].UIDMap[0].Count = 1 << 31
		}),
		"zombie-sig65": mut(func(tr *pstree.Tree) { tr.Tasks[2].ExitStatus = 65 }),
		// mount targets are DIR plus the point: no way out of DIR
		"mount-dotdot":   mut(func(tr *pstree.Tree) { tr.Namespaces[7].Mounts[1].Point = "/proc/../../etc" }),
		"mount-relative": mut(func(tr *pstree.Tree) { tr.Namespaces[7].Mounts[1].Point = "proc" }),
		"mount-bind-fwd": mut(func(tr *pstree.Tree) { tr.Namespaces[7].Mounts[2].BindOf = 4 }),
		"mount-nul-opts": mut(func(tr *pstree.Tree) { tr.Namespaces[7].Mounts[3].SuperOptions = "size=1\x00,x" }),
		"mount-pidns":    mut(func(tr *pstree.Tree) { tr.Namespaces[7].Mounts[1].PidNS = 3 }),
	}
}

// TestHostileTreesRefused: every hostile seed is refused by Decode, with
// the validator's error.
func TestHostileTreesRefused(t *testing.T) {
	for name, tr := range hostileTrees() {
		if _, err := Decode(withHeader(mustMarshal(t, tr))); !errors.Is(err, pstree.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
}

func mustMarshal(t *testing.T, tr *pstree.Tree) []byte {
	b, err := proto.Marshal(toProto(tr))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReadRefusesUnsafeFiles: Read looks at what pstree.img is before
// reading a byte of it. A FIFO (no writer) or a symbolic link to /dev/zero
// made Read block or allocate forever; an oversized file is refused from
// its size alone (a sparse file: nothing is read).
func TestReadRefusesUnsafeFiles(t *testing.T) {
	cases := map[string]struct {
		make func(p string) error
		want error
		msg  string
	}{
		"fifo":            {func(p string) error { return syscall.Mkfifo(p, 0o600) }, ErrNotRegular, "file mode p"},
		"symlink to zero": {func(p string) error { return os.Symlink("/dev/zero", p) }, ErrNotRegular, "a symbolic link"},
		"symlink to image": {func(p string) error {
			good := filepath.Join(filepath.Dir(p), "good.img")
			b, err := Encode(sample())
			if err != nil {
				return err
			}
			if err := os.WriteFile(good, b, 0o600); err != nil {
				return err
			}
			return os.Symlink(good, p)
		}, ErrNotRegular, "a symbolic link"},
		"directory": {func(p string) error { return os.Mkdir(p, 0o700) }, ErrNotRegular, "file mode d"},
		"oversized": {func(p string) error {
			f, err := os.Create(p)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Truncate(MaxFile + 1)
		}, ErrFormat, "268435457 bytes, more than the 268435456 an image may have"},
	}
	for name, c := range cases {
		dir := t.TempDir()
		p := filepath.Join(dir, FileName)
		if err := c.make(p); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, err := Read(dir)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: got %v, want %v naming %s with %q", name, err, c.want, p, c.msg)
		}
	}
}
