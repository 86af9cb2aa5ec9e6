//go:build amd64

package state_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// Restored roots are detached: as a child subreaper the test gets
	// them back when nsinit exits, and reaps them.
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	// What the test inherited is not for the counters, whose every
	// descriptor is dumped.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	os.Exit(m.Run())
}

// nsinit runs the built binary with its output in a file (restored
// programs inherit it; a pipe would stay open as long as they live).
func nsinit(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return testutil.Run(t, testutil.Binary(t), args...)
}

// restore runs `nsinit restore -D img -d -v`, again when one of the
// image's pids was taken (202): on a busy shared host with a small
// pid_max the cursor comes round to the pids the dumped tree had, and
// another process (or the restorer itself) gets one for a while.
func restore(t testing.TB, img string, args ...string) (string, error) {
	t.Helper()
	for i := 0; ; i++ {
		o, err := nsinit(t, append([]string{"restore", "-D", img, "-d", "-v"}, args...)...)
		if i == 9 || exitCode(err) != 202 {
			return o, err
		}
		t.Logf("restore attempt %d: %s", i+1, o)
	}
}

// counter builds testdata/counter.c with gcc, statically linked or not.
// A test VM has no compiler: vm-test builds the static one and names it
// in NSINIT_TEST_COUNTER; the dynamic one is skipped there (no libc).
func counter(t testing.TB, static bool) string {
	return cProgram(t, "counter", static)
}

// cProgram builds testdata/NAME.c; in a test VM, NSINIT_TEST_<NAME> names
// the static build vm-test made.
func cProgram(t testing.TB, name string, static bool) string {
	t.Helper()
	if p := os.Getenv("NSINIT_TEST_" + strings.ToUpper(name)); p != "" && static {
		return p
	}
	if testutil.InVM() && !static {
		t.Skip("no dynamic libc in the test VM")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("needs gcc (scripts/install-deps.sh installs it)")
	}
	out := filepath.Join(t.TempDir(), name)
	args := []string{"-O2", "-o", out, "testdata/" + name + ".c"}
	if static {
		args = append([]string{"-static"}, args...)
	}
	if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

// startCounter runs the counter with LEVELS nested pid namespaces below
// its root, in a session of its own, with /dev/null as stdio.
func startCounter(t testing.TB, bin string, levels int, out string, heapMB, periodMS int, attr *syscall.SysProcAttr, extra ...*os.File) *exec.Cmd {
	t.Helper()
	return startTree(t, []string{bin, strconv.Itoa(levels), out, strconv.Itoa(heapMB), strconv.Itoa(periodMS)}, attr, extra...)
}

// startTree runs argv in a session of its own, /dev/null as stdio, and
// kills the whole session at the end of the test.
func startTree(t testing.TB, argv []string, attr *syscall.SysProcAttr, extra ...*os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Setsid = true
	cmd.SysProcAttr = attr
	cmd.ExtraFiles = extra
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The whole session: the tasks in the nested pid namespaces
		// outlive their root's death, and come back to the test.
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		cmd.Wait()
		reapChildren()
	})
	return cmd
}

// ownCgroup makes a cgroup v2 for the test's tree alone (removed at the
// end) and returns the attributes that start a process in it; the test
// is skipped without a cgroup2 mount.
func ownCgroup(t *testing.T) *syscall.SysProcAttr {
	cg, err := testutil.NewCgroup(t, "nsinit-state-")
	if err != nil {
		t.Skip(err)
	}
	a := &syscall.SysProcAttr{}
	cg.Attach(a)
	return a
}

// lines reads the counter's output: the numbers it wrote, and whether any
// line says its heap checksum broke.
func lines(t testing.TB, out string) (nums []int, bad bool) {
	t.Helper()
	b, err := os.ReadFile(out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		n, word, ok := strings.Cut(l, " ")
		if !ok {
			continue // the last, empty one
		}
		v, err := strconv.Atoi(n)
		if err != nil {
			t.Fatalf("bad line %q in %s", l, out)
		}
		nums = append(nums, v)
		bad = bad || word != "ok"
	}
	return nums, bad
}

// waitLines waits until the counter wrote at least n lines (its own
// progress is the event; the deadline only bounds a hang).
func waitLines(t testing.TB, out string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		nums, bad := lines(t, out)
		if bad {
			t.Fatalf("%s: the heap checksum broke", out)
		}
		if len(nums) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d lines after 60s, waiting for %d", out, len(nums), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// dumpKillRestore waits until the program of cmd wrote 20 lines to out,
// dumps its tree with --state --kill into img, restores it (with
// restoreArgs) and checks
// that it continued: 20 more lines, numbered on from the last one before
// the dump (1, 2, 3, ... with no restart, no gap and no repeat), none of
// them "BAD". It returns the image and the dump's log.
func dumpKillRestore(t *testing.T, cmd *exec.Cmd, out, img string, restoreArgs ...string) (*pstree.Tree, string) {
	t.Helper()
	waitLines(t, out, 20)
	dumped, err := nsinit(t, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", img, "--state", "--kill", "-v")
	if err != nil {
		t.Fatalf("dump --state: %v\n%s", err, dumped)
	}
	cmd.Wait()
	before, _ := lines(t, out)
	tr, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	reapImage(tr)
	if !tr.StateRecorded {
		t.Fatal("image: state not recorded")
	}
	t.Cleanup(func() { killImageTree(tr) })
	o, err := restore(t, img, restoreArgs...)
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, o)
	}
	t.Logf("%s", o)
	waitLines(t, out, len(before)+20)
	nums, bad := lines(t, out)
	if bad {
		t.Fatal("a check of the program broke after the restore")
	}
	for i, n := range nums {
		if n != i+1 {
			t.Fatalf("line %d says %d (dumped after line %d): the program did not continue", i+1, n, len(before))
		}
	}
	return tr, dumped
}

// treePids lists root and its descendants (children files).
func treePids(t testing.TB, root int) []int {
	out := []int{root}
	for i := 0; i < len(out); i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", out[i], out[i]))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			out = append(out, pid)
		}
	}
	return out
}

// reapImage reaps the killed tasks of tr that came back to the test (a
// child subreaper) when their parent died.
func reapImage(tr *pstree.Tree) {
	for _, tk := range tr.Tasks {
		_, _ = unix.Wait4(tk.PID(), nil, unix.WALL, nil) // ECHILD: not ours
	}
}

// killImageTree kills what a restore of tr left, by the image's pids,
// children first, and reaps what comes back to the test.
func killImageTree(tr *pstree.Tree) {
	for i := len(tr.Tasks) - 1; i >= 0; i-- {
		_ = unix.Kill(tr.Tasks[i].PID(), unix.SIGKILL)
	}
	reapChildren()
}

// reapChildren reaps the test's children until it has none (bounded, in
// case one does not die).
func reapChildren() {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pid, err := unix.Wait4(-1, nil, unix.WALL|unix.WNOHANG, nil)
		if err == unix.ECHILD {
			return
		}
		if pid == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// TestStateContinues: a counter three pid levels deep (two nested pid
// namespaces below its root, every task of them a C program waiting in
// waitpid or counting) is dumped with --state and killed frozen, restored,
// and goes on counting from its last value with its 16 MiB heap intact:
// the output file's lines are 1, 2, 3, ... with no restart and no break,
// and every checksum holds; a resource limit set on every task comes
// back. Statically and dynamically linked, frozen by ptrace or by its own
// cgroup, innermost pids placed with set_tid or ns_last_pid.
func TestStateContinues(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	for _, c := range []struct {
		name           string
		static, cgroup bool
		placement      string
	}{{"static", true, false, "set_tid"}, {"dynamic", false, false, "set_tid"}, {"static-cgroup-freeze", true, true, "set_tid"},
		{"static-ns_last_pid", true, false, "ns_last_pid"}} {
		t.Run(c.name, func(t *testing.T) {
			bin := counter(t, c.static)
			var attr *syscall.SysProcAttr
			if c.cgroup {
				attr = ownCgroup(t) // alone in it: dump freezes it with cgroup.freeze
			}
			dir := t.TempDir()
			out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
			heapMB := 16
			if testutil.InVM() {
				heapMB = 2 // its checksum each round, under TCG
			}
			cmd := startCounter(t, bin, 2, out, heapMB, 2, attr)
			// A limit none of them started with: it must come back.
			waitLines(t, out, 1)
			for _, pid := range treePids(t, cmd.Process.Pid) {
				if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 777, Max: 1000}, nil); err != nil {
					t.Fatal(err)
				}
			}
			tr, dumped := dumpKillRestore(t, cmd, out, img, "--placement", c.placement)
			for _, tk := range tr.Tasks {
				var l unix.Rlimit
				if err := unix.Prlimit(tk.PID(), unix.RLIMIT_NOFILE, nil, &l); err != nil || l.Cur != 777 || l.Max != 1000 {
					t.Errorf("pid %d: RLIMIT_NOFILE %d/%d after the restore (%v), want 777/1000", tk.PID(), l.Cur, l.Max, err)
				}
			}
			if want := map[bool]string{true: "with cgroup v2 freeze", false: "with ptrace seize"}[c.cgroup]; !strings.Contains(dumped, want) {
				t.Fatalf("dump did not freeze %s:\n%s", want, dumped)
			}
			if len(tr.Tasks) != 3 || tr.Tasks[2].Level() != 2 {
				t.Fatalf("image: %d tasks, want 3 down to level 2", len(tr.Tasks))
			}
			// The counting task is the same task: its pids at every level.
			w := tr.Tasks[2]
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.PID()))
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Trim(fmt.Sprint(w.PIDs), "[]")
			if got := strings.Join(strings.Fields(testutil.Field(string(st), "NSpid")), " "); got != want {
				t.Fatalf("restored worker NSpid %q, image %q", got, want)
			}
			if o, err := nsinit(t, "check", "-t", strconv.Itoa(tr.Tasks[0].PID()), "-D", img); err != nil {
				t.Fatalf("check: %v\n%s", err, o)
			}
		})
	}
}

// TestStateContinuesPrograms: programs with signal handlers (read with the
// eBPF task iterator) - busybox sh counting in a loop (forking a sleep
// each round), Python - at the bottom of two nested pid namespaces made
// by busybox unshare, dumped with --state, killed frozen, restored: they
// go on counting from their last value.
func TestStateContinuesPrograms(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID, testutil.BPF)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (scripts/install-deps.sh installs busybox-static)")
	}
	for name, prog := range map[string][]string{
		"busybox-sh": {bb, "sh", "-c", `i=0; while :; do i=$((i+1)); echo "$i ok" >> "$0"; sleep 0.002; done`},
		"python":     {"python3", "-c", "import sys, time\ni = 0\nwhile True:\n    i += 1\n    with open(sys.argv[1], 'a') as f: f.write(f'{i} ok\\n')\n    time.sleep(0.002)\n"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := exec.LookPath(prog[0]); err != nil {
				t.Skipf("needs %s", prog[0])
			}
			dir := t.TempDir()
			out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
			argv := append([]string{bb, "unshare", "-p", "-f", bb, "unshare", "-p", "-f"}, prog...)
			dumpKillRestore(t, startTree(t, append(argv, out), nil), out, img)
		})
	}
}

// TestStatePipeBetweenNamespaces: a pipe whose writer is PID 1 of one
// pid namespace and whose reader is PID 1 of the namespace below, with
// numbers in flight in it at the dump: after the restore the reader goes
// on with the next number, none lost and none twice.
func TestStatePipeBetweenNamespaces(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	bin := cProgram(t, "pipe", true)
	dir := t.TempDir()
	out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
	tr, _ := dumpKillRestore(t, startTree(t, []string{bin, out}, nil), out, img)
	s, err := imagefile.ReadState(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.GetPipes()) != 1 || len(s.GetPipes()[0].GetData()) == 0 || len(tr.Tasks) != 3 {
		t.Fatalf("want 3 tasks and one pipe with data in flight; got %d tasks, %d pipes", len(tr.Tasks), len(s.GetPipes()))
	}
	t.Logf("%d bytes were in flight", len(s.GetPipes()[0].GetData()))
}

// TestStateThreads: a task with two threads (the main one waiting in
// pthread_join, the other counting with a thread-local copy) at the
// bottom of two nested pid namespaces (busybox unshare) comes back with
// both, the second at its tid at every level, and counts on.
func TestStateThreads(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID, testutil.BPF)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (scripts/install-deps.sh installs busybox-static)")
	}
	bin := cProgram(t, "threads", true)
	for _, cgroup := range []bool{false, true} {
		t.Run(map[bool]string{false: "ptrace-freeze", true: "cgroup-freeze"}[cgroup], func(t *testing.T) {
			var attr *syscall.SysProcAttr
			if cgroup {
				attr = ownCgroup(t) // the dump seizes each thread itself
			}
			threadsContinue(t, []string{bb, "unshare", "-p", "-f", bb, "unshare", "-p", "-f", bin}, attr)
		})
	}
}

func threadsContinue(t *testing.T, argv []string, attr *syscall.SysProcAttr) {
	dir := t.TempDir()
	out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
	tr, _ := dumpKillRestore(t, startTree(t, append(argv, out), attr), out, img)
	w := tr.Tasks[len(tr.Tasks)-1]
	if len(w.Threads) != 1 || w.Level() != 2 {
		t.Fatalf("image: the counter has %d other threads at level %d, want 1 at level 2", len(w.Threads), w.Level())
	}
	th := w.Threads[0]
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/status", w.PID(), th.TIDs[0]))
	if err != nil {
		t.Fatalf("thread %v is not back: %v", th.TIDs, err)
	}
	want := strings.Trim(fmt.Sprint(th.TIDs), "[]")
	if got := strings.Join(strings.Fields(testutil.Field(string(st), "NSpid")), " "); got != want {
		t.Fatalf("restored thread NSpid %q, image %q", got, want)
	}
}

// TestStateStoppedTask: a counter stopped by SIGSTOP (job control) when
// dumped comes back stopped, without running an instruction (its output
// does not grow), and counts on from its last value once continued.
func TestStateStoppedTask(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	bin := counter(t, true)
	dir := t.TempDir()
	out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
	cmd := startCounter(t, bin, 2, out, 1, 2, nil)
	waitLines(t, out, 5)
	pids := treePids(t, cmd.Process.Pid)
	w := pids[len(pids)-1]
	if err := unix.Kill(w, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, w, 'T')
	if o, err := nsinit(t, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", img, "--state", "--kill"); err != nil {
		t.Fatalf("dump --state: %v\n%s", err, o)
	}
	cmd.Wait()
	tr, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	reapImage(tr)
	if tr.Tasks[2].State != pstree.Stopped {
		t.Fatalf("image: the counter is %v, want stopped", tr.Tasks[2].State)
	}
	before, _ := lines(t, out)
	t.Cleanup(func() { killImageTree(tr) })
	if o, err := restore(t, img); err != nil {
		t.Fatalf("restore: %v\n%s", err, o)
	}
	waitState(t, w, 'T')
	if now, _ := lines(t, out); len(now) != len(before) {
		t.Fatalf("the stopped counter wrote %d lines after the restore", len(now)-len(before))
	}
	if err := unix.Kill(w, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitLines(t, out, len(before)+10)
	nums, bad := lines(t, out)
	for i, n := range nums {
		if n != i+1 || bad {
			t.Fatalf("line %d says %d (dumped after line %d): the counter did not continue", i+1, n, len(before))
		}
	}
}

// waitState waits until /proc/PID/stat shows state st.
func waitState(t testing.TB, pid int, st byte) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == st {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not in state %c after 60s: %s", pid, st, b)
		}
	}
}

// TestStateRefusesWithName: what the first slice cannot restore is
// refused at dump time with exit status 204, naming the task and the
// reason, and the dump leaves no page file behind; a restore whose
// state.img is missing is refused (201) before anything is created.
func TestStateRefusesWithName(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.SetTID)
	bin := counter(t, true)
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := filepath.Join(dir, "count")
	cmd := startCounter(t, bin, 1, out, 1, 2, nil, w) // fd 3: a pipe
	w.Close()
	waitLines(t, out, 3)
	img := filepath.Join(dir, "img")
	o, err := nsinit(t, "dump", "-t", strconv.Itoa(cmd.Process.Pid), "-D", img, "--state")
	if code := exitCode(err); code != 204 || !strings.Contains(o, fmt.Sprintf("pid %d fd 3 is pipe:", cmd.Process.Pid)) || !strings.Contains(o, "whose other end is outside the tree") {
		t.Fatalf("dump --state of a task with a pipe: status %d, want 204 naming pid and fd:\n%s", code, o)
	}
	if _, err := os.Stat(filepath.Join(img, "pages.img")); !os.IsNotExist(err) {
		t.Fatalf("a refused dump left pages.img: %v", err)
	}

	// Without the pipe the dump works; without its state.img the image
	// is refused before a task is created.
	out2 := filepath.Join(dir, "count2")
	cmd2 := startCounter(t, bin, 1, out2, 1, 2, nil)
	waitLines(t, out2, 3)
	img2 := filepath.Join(dir, "img2")
	if o, err := nsinit(t, "dump", "-t", strconv.Itoa(cmd2.Process.Pid), "-D", img2, "--state", "--kill"); err != nil {
		t.Fatalf("dump --state: %v\n%s", err, o)
	}
	cmd2.Wait()
	tr, err := imagefile.Read(img2)
	if err != nil {
		t.Fatal(err)
	}
	reapImage(tr)
	// Not through a new pid namespace or an agent yet: refused, nothing made.
	o, err = nsinit(t, "restore", "-D", img2, "--into-new-pidns", "-d")
	if code := exitCode(err); code != 204 || !strings.Contains(o, "dumped with --state") {
		t.Fatalf("restore --into-new-pidns of a state image: status %d, want 204:\n%s", code, o)
	}
	if err := os.Remove(filepath.Join(img2, "state.img")); err != nil {
		t.Fatal(err)
	}
	o, err = nsinit(t, "restore", "-D", img2, "-d")
	if code := exitCode(err); code != 201 {
		t.Fatalf("restore without state.img: status %d, want 201:\n%s", code, o)
	}
	for _, tk := range tr.Tasks {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", tk.PID())); err == nil {
			t.Errorf("pid %d exists after a refused restore", tk.PID())
		}
	}
}

func exitCode(err error) int { return testutil.ExitCode(err) }
