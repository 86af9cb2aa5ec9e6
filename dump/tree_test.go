package dump

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// roleEnv makes the re-executed test binary act as a tree member.
const roleEnv = "NSINIT_DUMP_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "threads":
		// A multi-threaded member: three goroutines each locked to a
		// thread that blocks in pause(2), on top of the runtime's own
		// threads. A blocking syscall keeps its thread, so the runtime
		// must run everything else on others: at least four threads
		// whatever GOMAXPROCS is (a one-CPU VM included). They exist
		// before the tree can look settled.
		for i := 0; i < 3; i++ {
			go func() {
				runtime.LockOSThread()
				for {
					unix.Pause() // blocks in the kernel, keeping its thread
				}
			}()
		}
		for threadCount() < 4 {
			time.Sleep(time.Millisecond)
		}
		sleepForever()
	case "setpgid":
		// A process group of its own inside its parent's session.
		if err := unix.Setpgid(0, 0); err != nil {
			os.Exit(3)
		}
		sleepForever()
	case "":
	default:
		fmt.Fprintln(os.Stderr, "unknown role")
		os.Exit(2)
	}
	// Orphans of the test trees come back to us, so cleanup reaps them all.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "subreaper:", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// threadCount is the Threads: line of /proc/self/status.
func threadCount() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// bigScript builds, under a root at level 0 that leads its own session:
//   - zombies with exit codes 0, 3, 200 and deaths by SIGKILL and SIGSEGV
//     (the root execs sleep and never waits);
//   - L1 (unshare -fp): an init in the root's session (leader outside),
//     a dead (reaped) session leader whose member survives, an nsinit-named
//     agent, and nsenter, whose child is born into L2 through setns;
//   - L2: an init, a job-control process group, a multi-threaded task, a
//     new session, and a user namespace owning a nested pid namespace L3.
const bigScript = `
ulimit -c 0
cd "$D"
busybox sh -c 'exit 0' &
busybox sh -c 'exit 3' &
busybox sh -c 'exit 200' &
busybox sh -c 'kill -KILL $$' &
busybox sh -c 'kill -SEGV $$' &
unshare -fp busybox sh -c '
  busybox setsid busybox sh -c "busybox sleep 1000 & exit 0" &
  NSINIT_DUMP_TEST_ROLE=threads ./nsinit --agent-test &
  unshare -fp busybox sh -c "
    busybox cut -d\" \" -f4 /proc/self/stat > l2init.tmp && busybox mv l2init.tmp l2init
    NSINIT_DUMP_TEST_ROLE=setpgid $T &
    busybox sleep 1000 &
    NSINIT_DUMP_TEST_ROLE=threads $T &
    unshare -U -r -fp busybox sleep 1000 &
    busybox setsid busybox sleep 1000 &
    wait
  " &
  while [ ! -e l2init ]; do busybox usleep 10000; done
  nsenter -t $(busybox cat l2init) -p busybox sleep 1000 &
  wait
' &
exec busybox sleep 1000
`

const bigTasks = 20

type testTree struct {
	cmd  *exec.Cmd
	root int
	dir  string
	cg   *testutil.Cgroup // nil if none
}

// startTree runs script under busybox sh as the root of a new tree, in a
// fresh cgroup v2 if inCgroup, and waits until it has n stable tasks.
func startTree(t testing.TB, script string, n int, inCgroup bool) *testTree {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create pid namespaces")
	}
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, "nsinit")); err != nil {
		t.Fatal(err)
	}
	tt := &testTree{dir: dir}
	cmd := exec.Command("/bin/busybox", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "D="+dir, "T="+self)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if inCgroup {
		cg, err := testutil.NewCgroup(t, "nsinit-dump-test-")
		if err != nil {
			t.Skip(err)
		}
		tt.cg = cg
		cg.Attach(cmd.SysProcAttr)
	}
	if err := cmd.Start(); err != nil {
		tt.cleanup(t)
		t.Fatal(err)
	}
	tt.cmd, tt.root = cmd, cmd.Process.Pid
	t.Cleanup(func() { tt.cleanup(t) })
	// Big benchmark trees spawn at ~100 tasks/s on a busy machine, at half
	// that when other test suites share its two cores.
	deadline := time.Now().Add(20*time.Second + time.Duration(n)*40*time.Millisecond)
	var prev string
	for {
		tr, err := ReadLive(tt.root, "")
		if err == nil && len(tr.Tasks) == n {
			sig := fmt.Sprint(summary(tr))
			if sig == prev {
				return tt
			}
			prev = sig
		}
		if time.Now().After(deadline) {
			if tr != nil {
				sum := summary(tr)
				if len(sum) > 30 {
					sum = sum[:30]
				}
				t.Fatalf("tree never settled at %d tasks: has %d: %v... (last err %v)", n, len(tr.Tasks), sum, err)
			}
			t.Fatalf("tree never settled: %v", err)
		}
		time.Sleep(100*time.Millisecond + time.Duration(n)*100*time.Microsecond)
	}
}

func summary(tr *pstree.Tree) []string {
	var s []string
	for _, t := range tr.Tasks {
		s = append(s, fmt.Sprintf("%v:%v:%v:%d", t.PIDs, t.Argv, t.State, len(t.Threads)))
	}
	return s
}

// cleanup kills every task of the tree and reaps what comes back to us.
func (tt *testTree) cleanup(t testing.TB) {
	tt.cg.Kill()
	if tt.cmd != nil {
		// discover is the plainest reader: it works even when the tree
		// is half-built.
		if ms, err := discover(procfs.New(""), tt.root); err == nil {
			for _, m := range ms {
				unix.Kill(m.pid, unix.SIGKILL)
			}
		}
		tt.cmd.Process.Kill()
		tt.cmd.Wait()
		tt.cmd = nil
	}
	// Reap the orphans (we are a child subreaper); the cgroup's own
	// cleanup, which runs after this one, removes it once they are gone.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pid, err := unix.Wait4(-1, nil, unix.WNOHANG|unix.WALL, nil)
		if err == unix.ECHILD {
			break
		}
		if pid == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// compareWithProc checks every task of the image against /proc, read here
// with the plainest code (not through the dump's reader).
func compareWithProc(t *testing.T, tr *pstree.Tree) {
	t.Helper()
	for _, task := range tr.Tasks {
		pid := task.PIDs[0]
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Errorf("pid %d: %v", pid, err)
			continue
		}
		st := string(b)
		for key, got := range map[string][]int{"NSpid": task.PIDs, "NSpgid": task.PGIDs, "NSsid": task.SIDs} {
			if want := field(st, key); fmt.Sprint(got) != "["+want+"]" {
				t.Errorf("pid %d: %s %v, /proc says %s", pid, key, got, want)
			}
		}
		if pid != tr.Tasks[0].PIDs[0] && field(st, "PPid") != strconv.Itoa(task.PPID) {
			t.Errorf("pid %d: ppid %d, /proc says %s", pid, task.PPID, field(st, "PPid"))
		}
		if n, _ := strconv.Atoi(field(st, "Threads")); n != len(task.Threads)+1 {
			t.Errorf("pid %d: %d threads, /proc says %d", pid, len(task.Threads)+1, n)
		}
		statB, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(statB)[strings.LastIndexByte(string(statB), ')')+1:])
		if code, _ := strconv.Atoi(f[len(f)-1]); code != task.ExitStatus {
			t.Errorf("pid %d: exit status %d, /proc says %d", pid, task.ExitStatus, code)
		}
		for _, k := range pstree.AllNSKinds() {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, k.ProcName()))
			if (err == nil) != (task.NS[k] != 0) {
				t.Errorf("pid %d: %v namespace id %d, /proc: %q %v", pid, k, task.NS[k], link, err)
			}
		}
	}
	// Namespace shape: two tasks share an image namespace id exactly when
	// they share the inode.
	ino := map[pstree.NSID]string{}
	for _, task := range tr.Tasks {
		for _, k := range pstree.AllNSKinds() {
			if task.NS[k] == 0 {
				continue
			}
			link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", task.PIDs[0], k.ProcName()))
			link = strings.TrimPrefix(link, "pid_for_children")
			link = strings.TrimPrefix(link, "pid")
			if prev, ok := ino[task.NS[k]]; ok && prev != link {
				t.Errorf("namespace %d is both %s and %s", task.NS[k], prev, link)
			}
			ino[task.NS[k]] = link
		}
	}
	seen := map[string]pstree.NSID{}
	for id, link := range ino {
		if prev, ok := seen[link]; ok {
			t.Errorf("inode %s has two ids %d and %d", link, prev, id)
		}
		seen[link] = id
	}
}

func field(status, key string) string {
	for _, l := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == key {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return ""
}

func byArgv(tr *pstree.Tree, sub string) []*pstree.Task {
	var out []*pstree.Task
	for i := range tr.Tasks {
		if strings.Contains(strings.Join(tr.Tasks[i].Argv, " "), sub) {
			out = append(out, &tr.Tasks[i])
		}
	}
	return out
}

func checkBigTree(t *testing.T, tt *testTree, tr *pstree.Tree) {
	t.Helper()
	if err := pstree.Validate(tr); err != nil {
		t.Fatal(err)
	}
	if len(tr.Tasks) != bigTasks {
		t.Fatalf("%d tasks, want %d: %v", len(tr.Tasks), bigTasks, summary(tr))
	}
	compareWithProc(t, tr)
	root := &tr.Tasks[0]
	if root.PIDs[0] != tt.root || root.SIDs[0] != tt.root {
		t.Errorf("root %v sid %v", root.PIDs, root.SIDs)
	}
	// Zombies: exit codes and signal deaths, untruncated. As a set: the
	// tree lists siblings by pid, and pids wrap (pid_max 32768) on a
	// machine that forks a lot, so the first forked may not be first.
	var statuses []int
	for _, task := range tr.Tasks {
		if task.State == pstree.Zombie {
			statuses = append(statuses, task.ExitStatus)
		}
	}
	slices.Sort(statuses)
	want := []int{0, int(unix.SIGKILL), int(unix.SIGSEGV), 3 << 8, 200 << 8}
	if !reflect.DeepEqual(statuses, want) {
		t.Errorf("zombie statuses %v, want %v", statuses, want)
	}
	levels := map[int]int{}
	for _, task := range tr.Tasks {
		levels[task.Level()]++
	}
	if !reflect.DeepEqual(levels, map[int]int{0: 7, 1: 5, 2: 7, 3: 1}) {
		t.Errorf("tasks per level %v", levels)
	}
	// L1 init: in the root's session, whose leader is outside (0 inside).
	for _, task := range tr.Tasks {
		if task.Level() == 1 && task.InnerPID() == 1 {
			if task.SIDs[0] != tt.root || task.SIDs[1] != 0 {
				t.Errorf("L1 init sids %v, want [%d 0]", task.SIDs, tt.root)
			}
		}
	}
	// Dead session leader: a member whose sid names no task of the tree.
	dead := false
	for _, task := range tr.Tasks {
		if task.Level() == 1 && tr.Task(task.SIDs[0]) == nil && task.SIDs[1] != 0 {
			dead = true
		}
	}
	if !dead {
		t.Error("no member of a dead session leader")
	}
	// Multi-threaded tasks and the agent.
	agents := 0
	for _, task := range byArgv(tr, "") {
		if task.Agent {
			agents++
			if task.Level() != 1 {
				t.Errorf("agent at level %d", task.Level())
			}
		}
	}
	if agents != 1 {
		t.Errorf("%d agents, want 1", agents)
	}
	self := mustExe(t)
	threaded := 0
	for _, task := range tr.Tasks {
		if task.Exe == self && slices.Contains(task.Env, roleEnv+"=threads") {
			threaded++
			if len(task.Threads) < 3 {
				t.Errorf("pid %d: %d threads besides its leader, want at least 3", task.PIDs[0], len(task.Threads))
			}
		}
	}
	if threaded != 2 {
		t.Errorf("%d multi-threaded members, want 2", threaded)
	}
	// Born through setns: in L2 with a parent at L1, PPid 0 inside.
	found := false
	for _, task := range tr.Tasks {
		if task.Level() == 2 && task.InnerPID() != 1 && tr.Task(task.PPID).Level() == 1 {
			found = true
		}
	}
	if !found {
		t.Error("no task born into L2 through setns")
	}
	// User namespace owning the L3 pid namespace.
	for _, task := range tr.Tasks {
		if task.Level() != 3 {
			continue
		}
		pidns := tr.Namespace(task.NS[pstree.PidNS])
		user := tr.Namespace(pidns.Owner)
		if user == nil || user.ID != task.NS[pstree.UserNS] || user.Parent == 0 || len(user.UIDMap) != 1 || user.UIDMap[0].Inside != 0 {
			t.Errorf("L3 pid namespace owner %+v, task user ns %d", user, task.NS[pstree.UserNS])
		}
	}
}

func TestDumpBigTreePtrace(t *testing.T) {
	tt := startTree(t, bigScript, bigTasks, false)
	tr, err := Dump(tt.root, Options{Log: t.Logf, AgentExe: mustExe(t)})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Checked {
		t.Error("dump without guard marked checked")
	}
	checkBigTree(t, tt, tr)
	// Detached: no task is traced any more.
	r := procfs.New("")
	for _, task := range tr.Tasks {
		if s, err := r.Status(task.PIDs[0]); err == nil && s.TracerPid != 0 {
			t.Errorf("pid %d still traced by %d", task.PIDs[0], s.TracerPid)
		}
	}
}

func TestDumpBigTreeCgroup(t *testing.T) {
	tt := startTree(t, bigScript, bigTasks, true)
	var notes []string
	tr, err := Dump(tt.root, Options{Log: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "cgroup v2 freeze") {
		t.Errorf("cgroup freeze not used: %q", notes)
	}
	checkBigTree(t, tt, tr)
	b, _ := os.ReadFile(filepath.Join(tt.cg.Dir, "cgroup.events"))
	if !strings.Contains(string(b), "frozen 0") {
		t.Errorf("left frozen: %s", b)
	}
}

func mustExe(t *testing.T) string {
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDumpRefusesForeignNamespace: a task of the tree born (through setns)
// into a pid namespace whose init is not in the tree cannot be restored, so
// the dump refuses it instead of writing a wrong image.
func TestDumpRefusesForeignNamespace(t *testing.T) {
	foreign := startTree(t, `exec unshare -fp busybox sleep 1000`, 2, false)
	ftr, err := ReadLive(foreign.root, "")
	if err != nil {
		t.Fatal(err)
	}
	init := ftr.Tasks[1].PIDs[0]
	tt := startTree(t, fmt.Sprintf(`nsenter -t %d -p busybox sleep 1000 & exec busybox sleep 1000`, init), 3, false)
	_, err = Dump(tt.root, Options{})
	if !errors.Is(err, ErrUnrepresentable) {
		t.Fatalf("got %v, want ErrUnrepresentable", err)
	}
	t.Log(err)
}

// TestDumpStoppedTask: a SIGSTOPped task is recorded as stopped under both
// freezers (ptrace hides group-stop behind 't').
func TestDumpStoppedTask(t *testing.T) {
	for _, cg := range []bool{false, true} {
		tt := startTree(t, `busybox sleep 1000 & busybox sleep 1000 & exec busybox sleep 1000`, 3, cg)
		tr, err := ReadLive(tt.root, "")
		if err != nil {
			t.Fatal(err)
		}
		victim := tr.Tasks[1].PIDs[0]
		unix.Kill(victim, unix.SIGSTOP)
		for i := 0; i < 100; i++ {
			if s, _ := procfs.New("").Status(victim); s.State == 'T' {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		tr, err = Dump(tt.root, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if tr.Tasks[1].State != pstree.Stopped || tr.Tasks[2].State != pstree.Live {
			t.Errorf("cgroup=%v: states %v %v", cg, tr.Tasks[1].State, tr.Tasks[2].State)
		}
		// Detach wakes the task for a moment before it re-enters its
		// group-stop (it shows R meanwhile): wait for it to settle.
		var st byte
		for i := 0; i < 200; i++ {
			s, _ := procfs.New("").Status(victim)
			if st = s.State; st == 'T' {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if st != 'T' {
			t.Errorf("cgroup=%v: stopped task is %c after the dump", cg, st)
		}
		tt.cleanup(t)
	}
}
