package restorer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// TestE2EIntoNewPidns restores one image ten times side by side with
// `nsinit restore --into-new-pidns -d`, while the tree it was dumped from
// still runs and holds every host pid of the image. Each copy must have the
// image's pids, sessions, groups, parents and states at every level below
// its new namespace, read from the host's /proc (NSpid, NSsid, NSpgid,
// parents' NSpid), and pass `nsinit check` run inside its namespace.
func TestE2EIntoNewPidns(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("needs nsenter (util-linux)")
	}
	img, dumped := dumpOfRunning(t, f43())
	const copies = 10
	roots := make([]int, copies)
	errs := make([]error, copies)
	var wg sync.WaitGroup
	for i := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := nsinit(t, "restore", "--into-new-pidns", "-D", img, "-d")
			if err != nil {
				errs[i] = fmt.Errorf("%v\n%s", err, out)
				return
			}
			lines := strings.Fields(out)
			if len(lines) != 1 {
				errs[i] = fmt.Errorf("printed %q, want one host pid", out)
				return
			}
			roots[i], errs[i] = strconv.Atoi(lines[0])
		}()
	}
	wg.Wait()
	for i, root := range roots {
		if root > 0 {
			t.Cleanup(func() { killNamespace(t, root) })
		}
		if errs[i] != nil {
			t.Fatalf("copy %d: %v", i, errs[i])
		}
	}
	for i, root := range roots {
		t.Run(fmt.Sprintf("copy%d", i), func(t *testing.T) {
			compareInNewPidns(t, dumped, root)
			init := parentOf(t, root)
			rootInside := dumped.Tasks[0].PID()
			cmd := exec.Command("nsenter", "-t", strconv.Itoa(init), "-m", "-p", "--",
				testutil.Binary(t), "check", "-t", strconv.Itoa(rootInside), "-D", img)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("check inside the new namespace: %v\n%s", err, out)
			}
		})
	}
}

// TestE2EIntoNewPidnsAttached runs `nsinit restore --into-new-pidns`
// without -d: it stays until the restored root exits and exits with its
// status; a SIGTERM it gets goes, through the new namespace's init, to the
// root. The pidfile, a FIFO here, says when the root is up.
func TestE2EIntoNewPidnsAttached(t *testing.T) {
	needRoot(t)
	tr := place(t, sleepers(f43()))
	img := t.TempDir()
	if err := imagefile.Write(img, tr); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "pid")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testutil.Binary(t), "restore", "--into-new-pidns", "-D", img, "--pidfile", fifo)
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fifo) // until the restore writes it
	if err != nil {
		t.Fatal(err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pidfile %q", b)
	}
	compareInNewPidns(t, tr, root)
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 128+int(unix.SIGTERM) {
		text, _ := os.ReadFile(out.Name())
		t.Errorf("exit: %v, want status %d (the root killed by SIGTERM)\n%s", err, 128+int(unix.SIGTERM), text)
	}
}

// TestIntoNewPidnsRefusesPIDOne: pid 1 of the new namespace is nsinit's; an
// image that needs it at level 0 is refused before anything is created.
func TestIntoNewPidnsRefusesPIDOne(t *testing.T) {
	needRoot(t)
	b := newTB()
	b.task(1, []int{1}, 0, []int{1}, []int{1})
	b.task(1, []int{2}, 1, []int{1}, []int{1})
	img := t.TempDir()
	if err := imagefile.Write(img, sleepers(&b.tr)); err != nil {
		t.Fatal(err)
	}
	out, err := nsinit(t, "restore", "--into-new-pidns", "-D", img, "-d")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 204 || !strings.Contains(out, "pid 1 at level 0") {
		t.Errorf("restore: %v, want status 204 (unsupported) naming pid 1\n%s", err, out)
	}
}

// dumpOfRunning restores hand-written image tr at its own pids (killed at
// the end of the test) and dumps that live tree, which keeps running and
// holding every host pid of the image: the image directory and the tree
// read back from it.
func dumpOfRunning(t *testing.T, tr *pstree.Tree) (string, *pstree.Tree) {
	t.Helper()
	tr = place(t, sleepers(tr))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	if out, err := nsinit(t, "restore", "-D", src, "-d"); err != nil {
		t.Fatalf("restore of the hand-written image: %v\n%s", err, out)
	}
	img := t.TempDir()
	if out, err := nsinit(t, "dump", "-t", strconv.Itoa(tr.Tasks[0].PID()), "-D", img, "--unchecked"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	dumped, err := imagefile.Read(img)
	if err != nil {
		t.Fatal(err)
	}
	return img, dumped
}

// compareInNewPidns checks the copy rooted at host pid root against the
// image through the host's /proc: below the new namespace's level, every
// task's pids, session and group ids, parent and zombie state are the
// image's.
func compareInNewPidns(t *testing.T, img *pstree.Tree, root int) {
	t.Helper()
	rd := procfs.New("/proc")
	byInner := map[int]procfs.Status{} // by pid at the image's level 0
	todo := []int{root}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		st, err := rd.Status(p)
		if err != nil {
			t.Fatalf("status of %d: %v", p, err)
		}
		if len(st.NSpid) < 2 {
			t.Fatalf("task %d: NSpid %v, not in a new pid namespace", p, st.NSpid)
		}
		byInner[st.NSpid[1]] = st
		pr, err := rd.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		tids, _ := pr.Tasks()
		for _, tid := range tids {
			kids, _ := pr.Children(tid)
			todo = append(todo, kids...)
		}
		pr.Close()
	}
	hostToInner := map[int]int{}
	for inner, st := range byInner {
		hostToInner[st.NSpid[0]] = inner
	}
	for _, tk := range img.Tasks {
		st, ok := byInner[tk.PIDs[0]]
		if !ok {
			t.Errorf("task %v: not in the copy", tk.PIDs)
			continue
		}
		if got := st.NSpid[1:]; !slices.Equal(got, tk.PIDs) {
			t.Errorf("task %v: NSpid below the new namespace %v", tk.PIDs, got)
		}
		if got := st.NSsid[1:]; !slices.Equal(got, tk.SIDs) {
			t.Errorf("task %v: NSsid below the new namespace %v, image %v", tk.PIDs, got, tk.SIDs)
		}
		if got := st.NSpgid[1:]; !slices.Equal(got, tk.PGIDs) {
			t.Errorf("task %v: NSpgid below the new namespace %v, image %v", tk.PIDs, got, tk.PGIDs)
		}
		if tk.PPID != 0 && hostToInner[st.PPid] != tk.PPID {
			t.Errorf("task %v: parent %d (host %d), image %d", tk.PIDs, hostToInner[st.PPid], st.PPid, tk.PPID)
		}
		if (tk.State == pstree.Zombie) != (st.State == 'Z') {
			t.Errorf("task %v: state %c, image %v", tk.PIDs, st.State, tk.State)
		}
	}
}

// parentOf is the parent of host pid p.
func parentOf(t *testing.T, p int) int {
	t.Helper()
	st, err := procfs.New("/proc").Status(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.PPid
}

// killNamespace kills the pid namespace the restored root lives in through
// its init (the root's parent), which takes every task inside with it.
func killNamespace(t testing.TB, root int) {
	st, err := procfs.New("/proc").Status(root)
	if err != nil {
		return
	}
	pfd, err := unix.PidfdOpen(st.PPid, 0)
	if err != nil {
		return
	}
	defer unix.Close(pfd)
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(st.PPid) + "/cmdline"); !strings.Contains(string(b), "__pidns-restore") {
		return // not ours any more
	}
	_ = unix.PidfdSendSignal(pfd, unix.SIGKILL, nil, 0)
	// The init's parent, `restore -d`, exited: the test process (a
	// subreaper) adopted it.
	_, _, _ = sys.WaitPidfd(pfd, unix.WALL)
}

// BenchmarkIntoNewPidnsCopies restores a 100-task tree over 3 pid levels
// (stopped payload) once at its own host pids, and in the same run ten
// times side by side with --into-new-pidns (ten restorer processes at
// once), both through the binary. It reports copies per second and the
// time of the ten copies against the one restore.
func BenchmarkIntoNewPidnsCopies(b *testing.B) {
	needRoot(b)
	const copies = 10
	var one, ten time.Duration
	for i := 0; i < b.N; i++ {
		tr := bigTree(100, freeBase(b, 20000, 101))
		img := b.TempDir()
		if err := imagefile.Write(img, tr); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		out, err := nsinit(b, "restore", "-D", img, "-d", "--payload", "stopped")
		one += time.Since(start)
		if err != nil {
			b.Skipf("restore at the host pids: %v\n%s", err, out)
		}
		killTree(b, tr, &Restored{})
		roots := make([]int, copies)
		var wg sync.WaitGroup
		start = time.Now()
		for c := range copies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := nsinit(b, "restore", "--into-new-pidns", "-D", img, "-d", "--payload", "stopped")
				if err == nil {
					roots[c], _ = strconv.Atoi(strings.TrimSpace(string(out)))
				}
			}()
		}
		wg.Wait()
		ten += time.Since(start)
		for c, root := range roots {
			if root == 0 {
				b.Fatalf("copy %d failed", c)
			}
			killNamespace(b, root)
		}
	}
	b.ReportMetric(float64(copies*b.N)/ten.Seconds(), "copies/s")
	b.ReportMetric(ten.Seconds()/one.Seconds(), "x-one-restore")
}
