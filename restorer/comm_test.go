package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// commRole is the environment variable that makes the test binary a task
// of TestE2ECommNames's tree instead of running tests: "renamed" renames
// itself with prctl(PR_SET_NAME) and exits 5, a zombie whose name no
// execve gave it. It runs in init, before TestMain (execute_test.go).
const commRole = "NSINIT_TEST_COMM_ROLE"

func init() {
	if os.Getenv(commRole) == "renamed" {
		name := []byte("renamed\x00")
		unix.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0)
		os.Exit(5)
	}
}

// TestRestoreCommNames restores a hand-written tree whose tasks and threads
// carry names - a live task, threads, zombies, an image stopped task, a
// 15-byte name (of a task of uid 1000) and one with blanks and a slash - in
// both payloads, and
// reads every /proc/PID[/task/TID]/comm back. The exec payload runs busybox
// sleep, so a live task's name comes from the symlink it is exec'd through
// (the slash one cannot: it keeps "busybox"); threads exist only in the
// stopped payload.
func TestRestoreCommNames(t *testing.T) {
	needRoot(t)
	mk := func() *pstree.Tree {
		b := newTB().ns(2, 1, 1)
		r := b.task(1, []int{24500}, 0, []int{24500}, []int{24500})
		r.Comm, r.Threads = "napper", []pstree.Thread{{TIDs: []int{24510}, Comm: "worker 1"}, {TIDs: []int{24511}}}
		// not root: it must be let through the link directory
		u := b.task(2, []int{24501, 1}, 24500, []int{24500, 0}, []int{24500, 0})
		u.Comm, u.Creds = "fifteen-bytes-x", pstree.Creds{UID: 1000, EUID: 1000, SUID: 1000, FSUID: 1000, GID: 1000, EGID: 1000, SGID: 1000, FSGID: 1000}
		z := b.task(2, []int{24502, 2}, 24501, []int{24500, 0}, []int{24500, 0})
		z.State, z.ExitStatus, z.Comm = pstree.Zombie, 3<<8, "sh"
		s := b.task(2, []int{24503, 3}, 24501, []int{24500, 0}, []int{24500, 0})
		s.State, s.Comm = pstree.Stopped, "a/b c"
		return &b.tr
	}
	for _, pay := range []Payload{PayloadExec, PayloadStopped} {
		t.Run([]string{"exec", "stopped"}[pay], func(t *testing.T) {
			var err error
			for try := 0; try < 3; try++ {
				tr := place(t, sleepers(mk()))
				p, perr := NewPlan(tr, Options{Payload: pay, Features: features})
				if perr != nil {
					t.Fatalf("plan: %v", perr)
				}
				var res *Restored
				if res, err = Execute(p, ExecOptions{Timeout: 30 * time.Second}); err != nil {
					continue // a pid of the window was taken meanwhile
				}
				t.Cleanup(func() { killTree(t, tr, res) })
				checkTree(t, tr, pay)
				for _, tk := range tr.Tasks {
					want := tk.Comm
					if pay == PayloadExec && tk.State != pstree.Zombie && strings.Contains(want, "/") {
						want = "busybox" // no file can have this name
					}
					if got := readComm(t, tk.PID(), tk.PID()); got != want {
						t.Errorf("task %v: comm %q, want %q", tk.PIDs, got, want)
					}
					for _, th := range tk.Threads {
						if pay == PayloadExec {
							break // threads do not survive execve
						}
						if got := readComm(t, tk.PID(), th.TIDs[0]); th.Comm != "" && got != th.Comm {
							t.Errorf("thread %v: comm %q, want %q", th.TIDs, got, th.Comm)
						}
					}
				}
				return
			}
			t.Fatal(err)
		})
	}
}

func readComm(t *testing.T, pid, tid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, tid))
	if err != nil {
		t.Errorf("comm of %d/%d: %v", pid, tid, err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// TestExecLinks: which tasks need a symlink, what it is named, that two
// tasks of one name and exe share it, and that remove leaves nothing.
func TestExecLinks(t *testing.T) {
	l := &execLinks{}
	defer l.remove()
	for _, c := range []struct{ exe, comm, want string }{
		{"/bin/busybox", "", "/bin/busybox"},
		{"/bin/busybox", "busybox", "/bin/busybox"},
		{"/x/a-name-longer-than-15", "a-name-longer-t", "/x/a-name-longer-than-15"},
		{"/bin/busybox", "a/b", "/bin/busybox"},
		{"/bin/busybox", "..", "/bin/busybox"},
		{"/bin/busybox", "sleep", "sleep"},
		{"/usr/bin/busybox", "sleep", "sleep"},
		{"/bin/busybox", "sleep", "sleep"},
		{"/bin/busybox", " odd name", " odd name"},
	} {
		got, err := l.path(0, c.exe, c.comm)
		if err != nil {
			t.Fatal(err)
		}
		if c.want == c.exe {
			if got != c.exe {
				t.Errorf("%s as %q: %s, want the exe itself", c.exe, c.comm, got)
			}
			continue
		}
		if filepath.Base(got) != c.want || !strings.HasPrefix(got, l.dir+"/") {
			t.Errorf("%s as %q: %s, want a link named %q in %s", c.exe, c.comm, got, c.want, l.dir)
		}
		if dst, err := os.Readlink(got); err != nil || dst != c.exe {
			t.Errorf("%s as %q: link to %q (%v)", c.exe, c.comm, dst, err)
		}
	}
	if len(l.links) != 3 {
		t.Errorf("%d links, want 3 (sleep of two exes, the odd name)", len(l.links))
	}
	dir := l.dir
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("link directory: %v %v, want mode 0711", fi, err)
	}
	l.remove()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("link directory left behind: %v", err)
	}
}

// commTreeSize: the root and five children, three of them zombies.
const commTreeSize = 6

// startCommTree starts a real tree whose names come from the paths of
// execve and from prctl, not from the executables:
//
//	root    `D/sleep 1000`, exec'd through a symlink to busybox: "sleep"
//	        (it never reaps: the zombies stay)
//	        `D/wait.sh`, a script (#!/bin/busybox sh) blocked opening a
//	        fifo: "wait.sh", the executable busybox
//	        `D/a-very-long-script-name.sh`, the same script: cut to 15 bytes
//	zombie  `D/sh -c 'exit 3'`: "sh"
//	zombie  `D/sleep 0`: "sleep"
//	zombie  the test binary, renamed "renamed" by prctl, exit 5
func startCommTree(t *testing.T) *exec.Cmd {
	t.Helper()
	d := t.TempDir()
	for _, n := range []string{"sleep", "sh"} {
		if err := os.Symlink("/bin/busybox", filepath.Join(d, n)); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(d, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"wait.sh", "a-very-long-script-name.sh"} {
		if err := os.WriteFile(filepath.Join(d, n), []byte("#!/bin/busybox sh\nread x < "+fifo+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`D=%s
$D/wait.sh &
$D/a-very-long-script-name.sh &
$D/sh -c 'exit 3' &
$D/sleep 0 &
%s=renamed %s &
exec $D/sleep 1000`, d, commRole, self)
	cmd := exec.Command("/bin/busybox", "sh", "-c", script)
	startScriptTree(t, cmd)
	root := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; {
		live, err := dump.ReadLive(root, "")
		if err == nil && len(live.Tasks) == commTreeSize && live.Tasks[0].Comm == "sleep" && zombies(live) == 3 {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tree did not form: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func zombies(tr *pstree.Tree) int {
	n := 0
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			n++
		}
	}
	return n
}

// TestE2ECommNames: the tree of startCommTree is dumped and killed through
// the built binary; the image must have every name; it is restored with
// the exec payload, then (that tree killed) with the stopped payload, and
// each time /proc/PID/comm of every task is the image's and `nsinit check`
// finds nothing.
func TestE2ECommNames(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	for attempt := 1; !commRoundTrip(t, attempt == 3); attempt++ {
	}
}

// commRoundTrip returns false when a restore failed because a pid of the
// dumped tree was taken meanwhile (the host is shared) and last is false.
func commRoundTrip(t *testing.T, last bool) bool {
	t.Helper()
	cmd := startCommTree(t)
	rootS := strconv.Itoa(cmd.Process.Pid)
	tr, img := dumpKilled(t, cmd, "--unchecked")
	var names []string
	for _, tk := range tr.Tasks {
		names = append(names, fmt.Sprintf("%s:%d", tk.Comm, tk.ExitStatus>>8))
	}
	if got, want := strings.Join(names, " "), "sleep:0 wait.sh:0 a-very-long-scr:0 sh:3 sleep:0 renamed:5"; got != want {
		t.Fatalf("names in the image (name:exit code, in pid order): %s, want %s", got, want)
	}
	waitGone(t, tr)
	for _, payload := range []string{"exec", "stopped"} {
		out, err := nsinit(t, "restore", "-D", img, "-d", "--payload", payload)
		if err != nil {
			if !last && payload == "exec" && strings.Contains(out, "pid already taken") {
				t.Logf("retrying with a new tree: %s", out)
				return false
			}
			t.Fatalf("restore (%s payload): %v\n%s", payload, err, out)
		}
		kill := pidfds(t, tr)
		for _, tk := range tr.Tasks {
			if got := readComm(t, tk.PID(), tk.PID()); got != tk.Comm {
				t.Errorf("%s payload: task %v: comm %q, image %q", payload, tk.PIDs, got, tk.Comm)
			}
		}
		// The stopped payload SIGSTOPs live tasks (docs/restore.md):
		// check reports that, and must report nothing else.
		if out, err := nsinit(t, "check", "-t", rootS, "-D", img); err != nil {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if payload == "stopped" && strings.HasSuffix(l, ": state: image live, live stopped") {
					continue
				}
				t.Errorf("check (%s payload): %v: %s", payload, err, l)
			}
		}
		kill()
		killTree(t, tr, &Restored{})
		waitGone(t, tr)
	}
	return true
}

// pidfds holds a pidfd of every restored task (they are ours right after
// the restore) and returns what kills them all: killTree alone cannot
// recognise parked builders, which run no image program, nor a payload
// still inside its execve (no cmdline yet).
func pidfds(t testing.TB, tr *pstree.Tree) func() {
	var fds []int
	for _, tk := range tr.Tasks {
		fd, err := unix.PidfdOpen(tk.PID(), 0)
		if err != nil {
			t.Errorf("pidfd of %v: %v", tk.PIDs, err)
			continue
		}
		fds = append(fds, fd)
	}
	done := false
	kill := func() {
		if done {
			return
		}
		done = true
		for i := len(fds) - 1; i >= 0; i-- {
			unix.PidfdSendSignal(fds[i], unix.SIGKILL, nil, 0)
			unix.Close(fds[i])
		}
	}
	t.Cleanup(kill)
	return kill
}

// BenchmarkRestoreNames measures, side by side in one run, what names cost:
// the 1,000-task zombie tree of BenchmarkRestore (stopped payload: one
// prctl per task) with and without a name on every task, and 100 live
// sleepers (exec payload: a symlink, the exec through it, the wait for the
// new name) named "napper" and unnamed. It reports the ratios.
func BenchmarkRestoreNames(b *testing.B) {
	needRoot(b)
	named := func(mk func(n, base int) *pstree.Tree, name string) func(n, base int) *pstree.Tree {
		return func(n, base int) *pstree.Tree {
			tr := mk(n, base)
			for i := range tr.Tasks {
				tr.Tasks[i].Comm = name
			}
			return tr
		}
	}
	var plain, withNames time.Duration
	for i := 0; i < b.N; i++ {
		plain += runOnce(b, benchTree, 1000, features)
		withNames += runOnce(b, named(benchTree, "z-named"), 1000, features)
	}
	b.ReportMetric(withNames.Seconds()/plain.Seconds(), "x-zombies-named")
	sleepers := func(n, base int) *pstree.Tree { return sleepers(floorLive(n, base)) }
	plain, withNames = 0, 0
	for i := 0; i < b.N; i++ {
		plain += runExec(b, sleepers, 100)
		withNames += runExec(b, named(sleepers, "napper"), 100)
	}
	b.ReportMetric(withNames.Seconds()/plain.Seconds(), "x-exec-named")
}

// floorLive: a root at level 0 and n-1 live children.
func floorLive(n, base int) *pstree.Tree {
	tr := floorTree(n, base)
	for i := range tr.Tasks {
		tr.Tasks[i].State = pstree.Live
	}
	return tr
}

// runExec is runOnce with the exec payload.
func runExec(b *testing.B, mk func(n, base int) *pstree.Tree, n int) time.Duration {
	for attempt := 0; attempt < 5; attempt++ {
		tr := mk(n, freeBase(b, 20000, n+1))
		p, err := NewPlan(tr, Options{Features: features})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		res, err := Execute(p, ExecOptions{})
		d := time.Since(start)
		if err == nil {
			pidfds(b, tr)()
			killTree(b, tr, res)
			return d
		}
	}
	b.Skip("no restore in 5 attempts (pids taken)")
	return 0
}
