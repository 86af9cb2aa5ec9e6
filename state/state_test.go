//go:build amd64

package state

import (
	"errors"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func TestParseMapLine(t *testing.T) {
	for line, want := range map[string]mapping{
		"00400000-00401000 r--p 00000000 fe:00 9978574                            /tmp/a b": {start: 0x400000, end: 0x401000, prot: unix.PROT_READ, dev: unix.Mkdev(0xfe, 0), inode: 9978574, path: "/tmp/a b"},
		"7ffe1a599000-7ffe1a5ba000 rw-p 00000000 00:00 0                          [stack]":  {start: 0x7ffe1a599000, end: 0x7ffe1a5ba000, prot: unix.PROT_READ | unix.PROT_WRITE, path: "[stack]"},
		"004aa000-004b0000 rw-s 00001000 00:01 7 ":                                          {start: 0x4aa000, end: 0x4b0000, prot: unix.PROT_READ | unix.PROT_WRITE, shared: true, offset: 0x1000, dev: unix.Mkdev(0, 1), inode: 7},
		"7fa9d9a6d000-7fa9d9a6f000 r-xp 00000000 00:00 0                          [vdso]":   {start: 0x7fa9d9a6d000, end: 0x7fa9d9a6f000, prot: unix.PROT_READ | unix.PROT_EXEC, path: "[vdso]"},
	} {
		got, err := parseMapLine(line)
		if err != nil || got != want {
			t.Errorf("%q: got %+v, %v; want %+v", line, got, err, want)
		}
	}
	for _, bad := range []string{"", "zz-00 r--p 0 0:0 0", "1000-2000 r--p 0 00 0"} {
		if _, err := parseMapLine(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestResumed(t *testing.T) {
	neg := func(e uint64) uint64 { return ^e + 1 }
	for _, c := range []struct {
		in, want unix.PtraceRegs
	}{
		// in a system call the freeze interrupted: run it again
		{unix.PtraceRegs{Orig_rax: 202, Rax: neg(errRestartSys), Rip: 0x1002}, unix.PtraceRegs{Orig_rax: ^uint64(0), Rax: 202, Rip: 0x1000}},
		// one that needs its restart block: EINTR
		{unix.PtraceRegs{Orig_rax: 230, Rax: neg(errRestartBlock), Rip: 0x1002}, unix.PtraceRegs{Orig_rax: ^uint64(0), Rax: neg(uint64(unix.EINTR)), Rip: 0x1002}},
		// user code: untouched
		{unix.PtraceRegs{Orig_rax: ^uint64(0), Rax: neg(errRestartSys), Rip: 0x1002}, unix.PtraceRegs{Orig_rax: ^uint64(0), Rax: neg(errRestartSys), Rip: 0x1002}},
	} {
		if got := resumed(c.in); got != c.want {
			t.Errorf("resumed(%+v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestFreeRange(t *testing.T) {
	busy := []span{{0x10000, 0x20000}, {0x23000, 0x30000}}
	if at, ok := freeRange(3*pageSize, busy); !ok || at != 0x20000 {
		t.Errorf("got %#x %v, want 0x20000", at, ok)
	}
	if at, ok := freeRange(4*pageSize, busy); !ok || at != 0x30000 {
		t.Errorf("got %#x %v, want 0x30000", at, ok)
	}
	if _, ok := freeRange(pageSize, []span{{0, taskSize}}); ok {
		t.Error("found room in a full address space")
	}
}

// TestValidateRefuses: each corruption of a good state image is refused
// (ErrBadState, or ErrUnsupported for what is well-formed but not done).
func TestValidateRefuses(t *testing.T) {
	tr := &pstree.Tree{Tasks: []pstree.Task{{PIDs: []int{100}}}}
	good := func() *imagepb.StateImage {
		return &imagepb.StateImage{PagesSize: 2 * pageSize, Tasks: []*imagepb.TaskSaved{{
			Pid:  100,
			Regs: make([]byte, regsSize),
			Vmas: []*imagepb.VMA{
				{Start: 0x400000, End: 0x402000, Prot: unix.PROT_READ, Kind: imagepb.VMAKind_VMA_FILE, Path: []byte("/bin/x"),
					Pages: []*imagepb.PageRun{{Addr: 0x401000, Npages: 1, Offset: pageSize}}},
				{Start: 0x7f0000000000, End: 0x7f0000002000, Prot: unix.PROT_READ | unix.PROT_EXEC, Kind: imagepb.VMAKind_VMA_VDSO},
			},
		}}}
	}
	if err := Validate(tr, good(), 2*pageSize); err != nil {
		t.Fatalf("good image refused: %v", err)
	}
	for name, c := range map[string]struct {
		edit func(*imagepb.StateImage)
		want error
	}{
		"pages size":        {func(s *imagepb.StateImage) { s.PagesSize = pageSize }, ErrBadState},
		"no task":           {func(s *imagepb.StateImage) { s.Tasks = nil }, ErrBadState},
		"stranger":          {func(s *imagepb.StateImage) { s.Tasks[0].Pid = 101 }, ErrBadState},
		"twice":             {func(s *imagepb.StateImage) { s.Tasks = append(s.Tasks, proto.Clone(s.Tasks[0]).(*imagepb.TaskSaved)) }, ErrBadState},
		"regs":              {func(s *imagepb.StateImage) { s.Tasks[0].Regs = s.Tasks[0].Regs[1:] }, ErrBadState},
		"unaligned":         {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Start++ }, ErrBadState},
		"kernel half":       {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[1].End = 1 << 63 }, ErrBadState},
		"overlap":           {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[1].Start = 0x401000 }, ErrBadState},
		"run outside vma":   {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Pages[0].Npages = 2 }, ErrBadState},
		"run outside pages": {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Pages[0].Offset = 2 * pageSize }, ErrBadState},
		"relative path":     {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Path = []byte("x") }, ErrBadState},
		"NUL in path":       {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Path = []byte("/x\x00y") }, ErrBadState},
		"no vdso":           {func(s *imagepb.StateImage) { s.Tasks[0].Vmas = s.Tasks[0].Vmas[:1] }, ErrBadState},
		"shared":            {func(s *imagepb.StateImage) { s.Tasks[0].Vmas[0].Shared = true }, ErrUnsupported},
		"fd without path":   {func(s *imagepb.StateImage) { s.Tasks[0].Files = []*imagepb.OpenFile{{Fd: 3}} }, ErrBadState},
	} {
		s := good()
		c.edit(s)
		err := Validate(tr, s, 2*pageSize)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	// Threads: exactly the tree's others than the leader.
	mt := &pstree.Tree{Tasks: []pstree.Task{{PIDs: []int{100}, Threads: []pstree.Thread{{TIDs: []int{101}}}}}}
	if err := Validate(mt, good(), 2*pageSize); !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), "0 threads recorded, the tree has 2") {
		t.Errorf("a thread without state: %v", err)
	}
	s := good()
	s.Tasks[0].Threads = []*imagepb.ThreadSaved{{Tid: 102, Regs: make([]byte, regsSize)}}
	if err := Validate(mt, s, 2*pageSize); !errors.Is(err, ErrBadState) || !strings.Contains(err.Error(), "thread 102 recorded where the tree has 101") {
		t.Errorf("another thread: %v", err)
	}
	s.Tasks[0].Threads[0].Tid = 101
	if err := Validate(mt, s, 2*pageSize); err != nil {
		t.Errorf("the right thread: %v", err)
	}
}

// FuzzValidate feeds arbitrary bytes, decoded as a state image, to
// Validate for a one-task tree: hostile state.img contents must give an
// error, never a panic.
func FuzzValidate(f *testing.F) {
	tr := &pstree.Tree{Tasks: []pstree.Task{{PIDs: []int{100}}}}
	good, err := proto.Marshal(&imagepb.StateImage{PagesSize: 2 * pageSize, Tasks: []*imagepb.TaskSaved{{
		Pid: 100, Regs: make([]byte, regsSize),
		Vmas: []*imagepb.VMA{{Start: 0x400000, End: 0x402000, Prot: unix.PROT_READ, Kind: imagepb.VMAKind_VMA_FILE, Path: []byte("/bin/x"),
			Pages: []*imagepb.PageRun{{Addr: 0x401000, Npages: 1, Offset: pageSize}}}},
	}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		var s imagepb.StateImage
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		_ = Validate(tr, &s, 2*pageSize)
	})
}
