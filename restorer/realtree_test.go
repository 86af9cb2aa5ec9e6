package restorer

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// realtreeSeeds pass today: the regular test runs them (each takes about a
// second). NSINIT_REALTREE_SEEDS=N runs N random seeds instead, for
// exploration; NSINIT_REALTREE_SEED=S runs seed S alone.
var realtreeSeeds = []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 882946930}

// TestRealTrees builds random real trees with busybox sh (see
// realtree_gen_test.go), records each through /proc, dumps and kills it with
// `nsinit dump --kill`, restores it with `nsinit restore -d`, and compares
// the restored tree with the record through /proc (by level-0 pid), then
// runs `nsinit check` too.
func TestRealTrees(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	seeds := realtreeSeeds
	if s := os.Getenv("NSINIT_REALTREE_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("NSINIT_REALTREE_SEED: %v", err)
		}
		seeds = []int64{n}
	} else if s := os.Getenv("NSINIT_REALTREE_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("NSINIT_REALTREE_SEEDS: %v", err)
		}
		seeds = nil
		r := rand.New(rand.NewSource(time.Now().UnixNano()))
		for range n {
			seeds = append(seeds, 1000+r.Int63n(1<<30))
		}
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatInt(seed, 10), func(t *testing.T) { realTree(t, seed) })
	}
}

// realTree runs one seed: build, record, dump --kill, restore, compare.
// The stopped payload runs on odd seeds (it also compares thread ids).
func realTree(t *testing.T, seed int64) {
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := testutil.Binary(t)
	rtNSinit = bin
	script, text, want := genRealTree(seed, dir, self, bin)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d script:\n%s", seed, text)
		}
	})
	stopped := seed%2 == 1
	// Two seeds in three put the tree in a cgroup of its own (the dump
	// freezes it there); the others make the dump fall back to ptrace.
	var orig *testutil.Cgroup
	if seed%3 != 0 {
		orig = newRTCgroup(t)
	}
	cmd := exec.Command("/bin/busybox", "sh", script)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	orig.Attach(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	rootS := strconv.Itoa(root)
	t.Cleanup(func() { rtKill(t, root, orig) })
	before, err := rtSettle(root, want, 20*time.Second)
	if err != nil {
		t.Fatalf("the generated tree did not form: %v", err)
	}
	img := rtDumpKill(t, cmd, dir, before)
	rest := newRTCgroup(t)
	t.Cleanup(func() { rtKill(t, root, rest) })
	args := []string{"restore", "-D", img, "-d"}
	if stopped {
		args = append(args, "--payload", "stopped")
	}
	if out, err := rtRun(t, rest, args...); err != nil {
		if strings.Contains(out, "pid already taken") {
			// The level-0 pids of a killed tree are free for any process
			// of the shared host until the restore takes them again; the
			// restore refused rightly, naming the taker.
			t.Skipf("host busy: %s", strings.TrimSpace(out))
		}
		plan, _ := rtRun(t, nil, "restore", "-D", img, "--dry-run")
		t.Fatalf("FINDING restore failed: %v\n%s\nplan:\n%s", err, out, plan)
	}
	after, err := rtSettle(root, len(before), 10*time.Second)
	if err != nil {
		after, _ = rtView(root)
		t.Errorf("FINDING restored tree does not settle: %v", err)
	}
	for _, d := range rtCompare(before, after, stopped) {
		t.Errorf("FINDING %s", d)
	}
	if out, err := rtRun(t, nil, "check", "-t", rootS, "-D", img); err != nil {
		if left := rtCheckFindings(out, stopped); len(left) > 0 || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("FINDING nsinit check: %v\n%s", err, strings.Join(left, "\n"))
		}
	}
}

// rtDumpKill dumps the tree cmd started (before is its record) into
// dir/img with `nsinit dump --kill` and waits until every task of it is
// gone; it returns the image's path.
func rtDumpKill(t *testing.T, cmd *exec.Cmd, dir string, before map[int]*rtTask) string {
	t.Helper()
	img := filepath.Join(dir, "img")
	if out, err := rtRun(t, nil, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", img, "--kill"); err != nil {
		t.Fatalf("FINDING dump --kill refused: %v\n%s", err, out)
	}
	cmd.Wait()
	if err := rtGone(before); err != nil {
		t.Fatalf("after dump --kill: %v", err)
	}
	return img
}

// rtCheckFindings drops what `nsinit check` reports by design from its
// output: it compares with the image as dumped and knows nothing of the
// payload. Under the exec payload the programs make their threads anew
// (threads are restored only with the stopped payload); under the stopped
// payload every live task, and each of its threads, is stopped, and an
// agent stays a stopped task instead of becoming an agent again.
func rtCheckFindings(out string, stopped bool) []string {
	var left []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		_, what, _ := strings.Cut(l, ": ")
		switch {
		case l == "":
		case !stopped && strings.HasPrefix(what, "threads: "):
		case !stopped && strings.HasPrefix(what, "parent thread: "): // threads come back only stopped
		case stopped && what == "state: image live, live stopped":
		case stopped && what == "agent: image true, live false":
		case stopped && strings.HasPrefix(what, "threads: ") && rtSameThreads(what):
		default:
			left = append(left, l)
		}
	}
	return left
}

// rtSameThreads: "threads: image [[T...]:live ...], live [[T...]:stopped ...]"
// with the same thread ids.
func rtSameThreads(what string) bool {
	img, live, ok := strings.Cut(strings.TrimPrefix(what, "threads: image "), ", live ")
	return ok && img == strings.ReplaceAll(live, ":stopped", ":live")
}

// rtRun runs bin/nsinit with its output in a file (restored payloads
// inherit it), in cgroup cg when not nil.
func rtRun(t *testing.T, cg *testutil.Cgroup, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	cg.Attach(cmd.SysProcAttr)
	return testutil.RunCmd(t, cmd)
}

// newRTCgroup makes a cgroup for one tree, or returns nil when there is
// none to make: the tree then runs without (its dump freezes it with ptrace).
func newRTCgroup(t *testing.T) *testutil.Cgroup {
	cg, err := testutil.NewCgroup(t, "nsinit-realtree-")
	if err != nil {
		return nil
	}
	return cg
}

// rtKill kills the tree under root (and everything in cg), and reaps what
// the test process inherited.
func rtKill(t *testing.T, root int, cg *testutil.Cgroup) {
	cg.Kill()
	if v, err := rtView(root); err == nil && rtOurs(root) {
		for pid := range v {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
	if !reapChildren(10 * time.Second) {
		t.Errorf("children of the test left after 10s")
	}
}

// rtOurs reports whether pid is still the test's child (a dead root's pid
// may already be someone else's).
func rtOurs(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	return err == nil && testutil.Field(string(b), "PPid") == strconv.Itoa(os.Getpid())
}

// rtGone waits until no task of v is left after `dump --kill`, reaping
// what comes back to the test process.
func rtGone(v map[int]*rtTask) error {
	for i := 0; i < 2000; i++ {
		var left []int
		for pid := range v {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if pid, _ := unix.Wait4(-1, nil, unix.WNOHANG|unix.WALL, nil); pid <= 0 {
			time.Sleep(5 * time.Millisecond)
		}
		if i == 1999 {
			return fmt.Errorf("pids %v still there", left)
		}
	}
	return nil
}

// rtTask is one task as /proc shows it, with namespaces named by a label
// that survives a restore (kind and the lowest level-0 pid in it).
type rtTask struct {
	NSpid, NSpgid, NSsid string
	PPid                 int
	State                string // Z, T or "live"
	Exit                 string // zombies: stat field 52
	Argv                 string
	Threads              []string // NSpid of every thread but the leader
	NS                   map[string]string
	// raw inodes before labelling
	ino map[string]uint64
}

// rtNSinit is the nsinit binary the trees run agents from.
var rtNSinit string

var rtNSKinds = []string{"pid", "pid_for_children", "user", "net", "uts"}

// rtView reads every task under root from the host procfs, through the
// children files of every thread, with the plainest code.
func rtView(root int) (map[int]*rtTask, error) {
	v := map[int]*rtTask{}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if v[pid] != nil {
			continue
		}
		tk, kids, err := rtRead(pid)
		if err != nil {
			return nil, err
		}
		v[pid] = tk
		queue = append(queue, kids...)
	}
	rtLabel(v)
	return v, nil
}

func rtRead(pid int) (*rtTask, []int, error) {
	d := fmt.Sprintf("/proc/%d", pid)
	st, err := os.ReadFile(d + "/status")
	if err != nil {
		return nil, nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	s := string(st)
	tk := &rtTask{
		NSpid:  testutil.Field(s, "NSpid"),
		NSpgid: testutil.Field(s, "NSpgid"),
		NSsid:  testutil.Field(s, "NSsid"),
		State:  "live",
		NS:     map[string]string{},
		ino:    map[string]uint64{},
	}
	tk.PPid, _ = strconv.Atoi(testutil.Field(s, "PPid"))
	switch state := testutil.Field(s, "State"); {
	case strings.HasPrefix(state, "Z"):
		tk.State = "Z"
		stat, err := os.ReadFile(d + "/stat")
		if err != nil {
			return nil, nil, err
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
		if len(f) >= 50 {
			tk.Exit = f[49]
		}
	case strings.HasPrefix(state, "T"):
		tk.State = "T"
	}
	cl, _ := os.ReadFile(d + "/cmdline")
	tk.Argv = strings.ReplaceAll(strings.TrimRight(string(cl), "\x00"), "\x00", " ")
	if tk.State != "Z" {
		for _, k := range rtNSKinds {
			var sb unix.Stat_t
			if err := unix.Stat(d+"/ns/"+k, &sb); err == nil {
				tk.ino[k] = sb.Ino
			}
		}
		for _, k := range []string{"pid", "user"} {
			if ino, ok := rtNSRel(d+"/ns/pid", k); ok {
				tk.ino["pid-"+k] = ino
			}
		}
		if h, err := rtHostname(d + "/ns/uts"); err == nil {
			tk.NS["hostname"] = h
		}
		if b, err := os.ReadFile(d + "/net/dev"); err == nil {
			var links []string
			for _, l := range strings.Split(string(b), "\n")[2:] {
				if n, _, ok := strings.Cut(l, ":"); ok {
					links = append(links, strings.TrimSpace(n))
				}
			}
			slices.Sort(links)
			tk.NS["links"] = strings.Join(links, ",")
		}
		if b, err := os.ReadFile(d + "/uid_map"); err == nil {
			tk.NS["uid_map"] = strings.Join(strings.Fields(string(b)), " ")
		}
	}
	var kids []int
	tids, err := os.ReadDir(d + "/task")
	if err != nil {
		return nil, nil, err
	}
	for _, e := range tids {
		tid, _ := strconv.Atoi(e.Name())
		if tid != pid {
			b, err := os.ReadFile(fmt.Sprintf("%s/task/%d/status", d, tid))
			if err == nil {
				tk.Threads = append(tk.Threads, testutil.Field(string(b), "NSpid"))
			}
		}
		b, _ := os.ReadFile(fmt.Sprintf("%s/task/%d/children", d, tid))
		for _, c := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(c)
			kids = append(kids, n)
		}
	}
	slices.Sort(tk.Threads)
	return tk, kids, nil
}

// rtNSRel follows NS_GET_PARENT ("pid") or NS_GET_USERNS ("user") from a
// namespace file and returns the inode it leads to.
func rtNSRel(path, rel string) (uint64, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	req := uintptr(0xb702) // NS_GET_PARENT
	if rel == "user" {
		req = 0xb701 // NS_GET_USERNS
	}
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
	if errno != 0 {
		return 0, false
	}
	defer unix.Close(int(r))
	var st unix.Stat_t
	if unix.Fstat(int(r), &st) != nil {
		return 0, false
	}
	return st.Ino, true
}

// rtHostname reads the hostname of a uts namespace from a locked thread
// that joins it and comes back.
func rtHostname(path string) (string, error) {
	type res struct {
		h   string
		err error
	}
	c := make(chan res)
	go func() {
		runtime.LockOSThread()
		back, err := unix.Open("/proc/thread-self/ns/uts", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		defer unix.Close(back)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		var u unix.Utsname
		unix.Uname(&u)
		if unix.Setns(back, unix.CLONE_NEWUTS) == nil {
			runtime.UnlockOSThread() // else the thread dies with the goroutine
		}
		c <- res{h: unix.ByteSliceToString(u.Nodename[:])}
	}()
	r := <-c
	return r.h, r.err
}

// rtLabel names every namespace inode by its kind and the lowest level-0
// pid of a task in it (pid_for_children by the pid namespace it is).
func rtLabel(v map[int]*rtTask) {
	pids := make([]int, 0, len(v))
	for p := range v {
		pids = append(pids, p)
	}
	slices.Sort(pids)
	label := map[string]map[uint64]string{}
	for _, k := range rtNSKinds {
		label[k] = map[uint64]string{}
	}
	for _, p := range pids {
		for _, k := range []string{"pid", "user", "net", "uts"} {
			if ino, ok := v[p].ino[k]; ok {
				if _, seen := label[k][ino]; !seen {
					label[k][ino] = fmt.Sprintf("%s@%d", k, p)
				}
			}
		}
	}
	name := func(k string, ino uint64) string {
		if l, ok := label[k][ino]; ok {
			return l
		}
		return fmt.Sprintf("%s:outside", k) // e.g. the parent of the root's pid ns
	}
	for _, tk := range v {
		for k, ino := range tk.ino {
			switch k {
			case "pid_for_children", "pid-pid":
				tk.NS[k] = name("pid", ino)
			case "pid-user":
				tk.NS[k] = name("user", ino)
			default:
				tk.NS[k] = name(k, ino)
			}
		}
		if _, ok := tk.ino["pid_for_children"]; !ok && tk.State != "Z" {
			tk.NS["pid_for_children"] = "none"
		}
	}
}

// rtSettle waits until the tree under root has n tasks and reads the same
// twice in a row.
func rtSettle(root, n int, timeout time.Duration) (map[int]*rtTask, error) {
	deadline := time.Now().Add(timeout)
	prev := ""
	var v map[int]*rtTask
	var err error
	for time.Now().Before(deadline) {
		v, err = rtView(root)
		if err == nil && len(v) == n {
			sig := rtSig(v)
			if sig == prev {
				return v, nil
			}
			prev = sig
		}
		time.Sleep(150 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%d tasks, want %d:\n%s", len(v), n, rtSig(v))
}

func rtSig(v map[int]*rtTask) string {
	pids := make([]int, 0, len(v))
	for p := range v {
		pids = append(pids, p)
	}
	slices.Sort(pids)
	var b strings.Builder
	for _, p := range pids {
		fmt.Fprintf(&b, "%d %+v\n", p, *v[p])
	}
	return b.String()
}

// rtCompare lists every difference between the recorded and the restored
// view. Thread ids are compared under the stopped payload only (the exec
// payload's programs make their threads anew); under it every live task is
// stopped.
func rtCompare(before, after map[int]*rtTask, stopped bool) []string {
	var diffs []string
	pids := make([]int, 0, len(before))
	for p := range before {
		pids = append(pids, p)
	}
	slices.Sort(pids)
	root := pids[0]
	for _, p := range pids {
		b, a := before[p], after[p]
		if a == nil {
			diffs = append(diffs, fmt.Sprintf("task %d (%s, %s) missing after restore", p, b.NSpid, b.Argv))
			continue
		}
		d := func(what string, want, got any) {
			if fmt.Sprint(want) != fmt.Sprint(got) {
				diffs = append(diffs, fmt.Sprintf("task %s (%s): %s %v, want %v", b.NSpid, b.Argv, what, got, want))
			}
		}
		d("NSpid", b.NSpid, a.NSpid)
		d("NSpgid", b.NSpgid, a.NSpgid)
		d("NSsid", b.NSsid, a.NSsid)
		if p != root {
			d("PPid", b.PPid, a.PPid)
		}
		wantState := b.State
		if stopped && wantState == "live" {
			wantState = "T"
		}
		d("state", wantState, a.State)
		d("exit status", b.Exit, a.Exit)
		// A restored agent's threads are its Go runtime's (see
		// docs/restore.md, Agents).
		agent := strings.HasPrefix(b.Argv, rtNSinit+" -- ")
		if !stopped && b.State != "Z" {
			d("argv", b.Argv, a.Argv)
		}
		if stopped && !agent {
			d("threads", b.Threads, a.Threads)
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range b.NS {
				if !yield(k) {
					return
				}
			}
		}) {
			d("ns "+k, b.NS[k], a.NS[k])
		}
	}
	for p, a := range after {
		if before[p] == nil {
			diffs = append(diffs, fmt.Sprintf("task %d (%s, %s) is new after restore", p, a.NSpid, a.Argv))
		}
	}
	return diffs
}

var _ = errors.Is
