package procfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// status-nested: a task at level 2 whose group and session leaders live at
// level 0 (captured from the host procfs).
func TestParseStatusNested(t *testing.T) {
	s, err := ParseStatus(fixture(t, "status-nested"))
	if err != nil {
		t.Fatal(err)
	}
	if s.State != 'S' || s.PPid != 3813 || s.Threads != 1 {
		t.Errorf("state %c ppid %d threads %d", s.State, s.PPid, s.Threads)
	}
	for name, got := range map[string][]int{"NSpid": s.NSpid, "NStgid": s.NStgid} {
		if !reflect.DeepEqual(got, []int{3814, 3, 2}) {
			t.Errorf("%s = %v", name, got)
		}
	}
	if !reflect.DeepEqual(s.NSpgid, []int{3808, 0, 0}) || !reflect.DeepEqual(s.NSsid, []int{3408, 0, 0}) {
		t.Errorf("NSpgid %v NSsid %v", s.NSpgid, s.NSsid)
	}
	if s.UID != [4]uint32{} || s.CapBnd == 0 {
		t.Errorf("uid %v capbnd %x", s.UID, s.CapBnd)
	}
	if s.SigIgn != 6 || s.SigPnd|s.ShdPnd|s.SigBlk|s.SigCgt != 0 || s.Umask != 0o22 {
		t.Errorf("signals ign %x pnd %x shd %x blk %x cgt %x, umask %o", s.SigIgn, s.SigPnd, s.ShdPnd, s.SigBlk, s.SigCgt, s.Umask)
	}
}

func TestParseStatusRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":      "",
		"no NSsid":   "State:\tS\nPPid:\t1\nNSpid:\t5\nNStgid:\t5\nNSpgid:\t5\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n",
		"mismatch":   "State:\tS\nPPid:\t1\nNSpid:\t5 1\nNStgid:\t5\nNSpgid:\t5\nNSsid:\t5\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n",
		"bad number": "State:\tS\nPPid:\tx\n",
		"bad uid":    "Uid:\t0 0\n",
	} {
		if _, err := ParseStatus([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseStat(t *testing.T) {
	cases := []struct {
		file    string
		state   byte
		exit    int
		comm    string
		exiting bool // PF_EXITING in field 9
	}{
		{"stat-live", 'S', 0, "busybox", false},
		{"stat-zombie-200", 'Z', 200 << 8, "busybox", true},
		{"stat-zombie-segv-oddcomm", 'Z', 139, "we ird) (x", true},
	}
	for _, c := range cases {
		s, err := ParseStat(fixture(t, c.file))
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		if s.State != c.state || s.ExitCode != c.exit || s.Comm != c.comm || (s.Flags&PFExiting != 0) != c.exiting {
			t.Errorf("%s: state %c exit %d comm %q flags %#x", c.file, s.State, s.ExitCode, s.Comm, s.Flags)
		}
	}
	live, _ := ParseStat(fixture(t, "stat-live"))
	if want := (MMLayout{
		StartCode: 4198400, EndCode: 5785993, StartStack: 140727851398064,
		StartData: 6141704, EndData: 6178576, StartBrk: 145002496,
		ArgStart: 140727851399641, ArgEnd: 140727851399658,
		EnvStart: 140727851399658, EnvEnd: 140727851401193,
	}); live.MM != want {
		t.Errorf("stat-live layout %+v, want %+v", live.MM, want)
	}
	if _, err := ParseStat([]byte("1 (x) S 0 1 1")); err == nil {
		t.Error("short stat accepted")
	}
}

func TestParseIDMapAndNSLink(t *testing.T) {
	m, err := ParseIDMap([]byte("         0          0 4294967295\n         1     100000      65536\n"))
	if err != nil || !reflect.DeepEqual(m, []IDMapEntry{{0, 0, 4294967295}, {1, 100000, 65536}}) {
		t.Errorf("ParseIDMap: %v %v", m, err)
	}
	if _, err := ParseIDMap([]byte("0 0\n")); err == nil {
		t.Error("short map line accepted")
	}
	if ino, err := ParseNSLink("pid", "pid:[4026531836]"); err != nil || ino != 4026531836 {
		t.Errorf("ParseNSLink: %d %v", ino, err)
	}
	if _, err := ParseNSLink("pid", "net:[1]"); err == nil {
		t.Error("wrong kind accepted")
	}
	if got := SplitNUL([]byte("a\x00\x00b\x00")); !reflect.DeepEqual(got, []string{"a", "", "b"}) {
		t.Errorf("SplitNUL: %q", got)
	}
}

// The live procfs: our own process, and a pid that does not exist.
func TestReaderSelf(t *testing.T) {
	r := New("")
	pid := os.Getpid()
	s, err := r.Status(pid)
	if err != nil {
		t.Fatal(err)
	}
	if s.NSpid[0] != pid || s.PPid != os.Getppid() {
		t.Errorf("NSpid %v PPid %d", s.NSpid, s.PPid)
	}
	st, err := r.Stat(pid)
	if err != nil || st.PPid != os.Getppid() || st.ExitCode != 0 {
		t.Errorf("stat %+v %v", st, err)
	}
	argv, err := r.Cmdline(pid)
	if err != nil || !reflect.DeepEqual(argv, os.Args) {
		t.Errorf("cmdline %q %v", argv, err)
	}
	tids, err := r.Tasks(pid)
	if err != nil || len(tids) < 1 {
		t.Errorf("tasks %v %v", tids, err)
	}
	if _, err := r.NSInode(pid, "pid"); err != nil {
		t.Error(err)
	}
	exe, _ := os.Executable()
	if got, err := r.Link(pid, "exe"); err != nil || got != exe {
		t.Errorf("exe %q %v, want %q", got, err, exe)
	}
	if _, err := r.Status(1 << 30); !errors.Is(err, ErrGone) {
		t.Errorf("missing pid: %v, want ErrGone", err)
	}
}

// TestReadWholeAndPaged reads files bigger than the Reader's buffer: the
// one-piece files (stat, status, cmdline, environ, where a short read ends
// the file) and the paged ones (children, where it does not) must come out
// exactly as os.ReadFile sees them. A child with a 20 KB argv and environ
// and a parent with 1,000 children (6 KB of pids) cover both.
func TestReadWholeAndPaged(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox")
	}
	big := strings.Repeat("x", 20000)
	cmd := exec.Command("/bin/busybox", "sh", "-c",
		`i=0; while [ $i -lt 1000 ]; do busybox sleep 1000 & i=$((i+1)); done; echo ready; wait`, big)
	cmd.Env = []string{"BIG=" + big}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	r := New("")
	defer func() {
		kids, _ := r.Children(pid, pid)
		for _, k := range kids {
			unix.Kill(k, unix.SIGKILL)
		}
		cmd.Process.Kill()
		cmd.Wait()
		for _, k := range kids { // reparented to init or a subreaper; gone soon
			for i := 0; i < 100 && unix.Kill(k, 0) == nil; i++ {
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	// The shell stays itself after "ready": an exec would change its
	// cmdline between the two reads compared below, and busybox sh execs
	// the last command of a -c script in place - so the script ends in
	// the builtin wait, which neither execs nor forks.
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	r.buf = make([]byte, 64) // force growing and many reads
	for _, f := range []string{"stat", "status", "cmdline", "environ"} {
		p := r.path(pid, f)
		got, err := r.read(p, true)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		// Times, counters and the state move between two reads: compare
		// the shape instead, which is what paged reading could get wrong -
		// every field of stat, every key of status.
		switch f {
		case "stat":
			got, want = []byte(strconv.Itoa(len(strings.Fields(string(got))))), []byte(strconv.Itoa(len(strings.Fields(string(want)))))
		case "status":
			got, want = statusKeys(got), statusKeys(want)
		}
		if string(got) != string(want) {
			t.Errorf("%s: read %d bytes, os.ReadFile %d", f, len(got), len(want))
		}
	}
	r.buf = make([]byte, 8192)
	kids, err := r.Children(pid, pid)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(r.taskPath(pid, pid, "children"))
	if len(kids) != 1000 || len(kids) != len(strings.Fields(string(b))) {
		t.Errorf("children: %d, os.ReadFile %d, want 1000", len(kids), len(strings.Fields(string(b))))
	}
	pr, err := r.Open(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	if n, err := pr.Threads(); err != nil || n != 1 {
		t.Errorf("Threads of the shell: %d %v, want 1", n, err)
	}
	if k, err := pr.Children(pid); err != nil || len(k) != len(kids) {
		t.Errorf("Proc.Children: %d %v, want %d", len(k), err, len(kids))
	}
	self, err := r.Open(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	// The Go runtime may add a thread between the two reads: try again.
	for i := 0; ; i++ {
		tids, _ := self.Tasks()
		n, err := self.Threads()
		if err == nil && n == len(tids) {
			break
		}
		if i == 10 {
			t.Errorf("Threads of the test: %d %v, task/ lists %d", n, err, len(tids))
			break
		}
	}
	if !r.HasChildren() {
		t.Error("HasChildren false with a children file")
	}
}

// statusKeys is the keys of a status file, in order, without their values.
func statusKeys(b []byte) []byte {
	var keys []string
	for _, l := range strings.Split(string(b), "\n") {
		if k, _, ok := strings.Cut(l, ":"); ok {
			keys = append(keys, k)
		}
	}
	return []byte(strings.Join(keys, ","))
}

// TestStatusName renames a thread of this test to names the kernel writes
// into status in more than one way (leading blank, tab, newline and
// backslash escaped, ':', '/', parentheses, cut at 15 bytes) and reads
// each back through TaskStatus: it must be /proc/PID/task/TID/comm, byte
// for byte.
func TestStatusName(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	old, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
	if err != nil {
		t.Fatal(err)
	}
	defer setName(t, strings.TrimSuffix(string(old), "\n"))
	r := New("")
	for _, name := range []string{"plain", " a\\b\nc\td/e:f", "(x) y", "\\n", "", "0123456789abcdefghij"} {
		setName(t, name)
		want, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
		if err != nil {
			t.Fatal(err)
		}
		s, err := r.TaskStatus(os.Getpid(), tid)
		if err != nil {
			t.Fatal(err)
		}
		if w := strings.TrimSuffix(string(want), "\n"); s.Name != w {
			t.Errorf("name %q: status gives %q, comm %q", name, s.Name, w)
		}
	}
}

func setName(t *testing.T, name string) {
	t.Helper()
	b := append([]byte(name), 0)
	if _, _, e := unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0); e != 0 {
		t.Fatal(e)
	}
}

// TestDescendants finds a shell's two children and a grandchild.
func TestDescendants(t *testing.T) {
	sh := exec.Command("sh", "-c", "sleep 100 & sh -c 'sleep 100 & wait' & wait")
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, p := range New("/proc").Descendants(sh.Process.Pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
		sh.Process.Kill()
		sh.Wait()
	}()
	for i := 0; ; i++ {
		if d := New("/proc").Descendants(sh.Process.Pid); len(d) == 3 {
			break
		}
		if i == 30000 {
			t.Fatalf("descendants of the shell: %v, want 3", New("/proc").Descendants(sh.Process.Pid))
		}
		time.Sleep(time.Millisecond)
	}
}
