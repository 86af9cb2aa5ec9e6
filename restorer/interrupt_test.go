package restorer

import (
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// TestE2ESignalMidRestore sends a signal to `nsinit restore` at a random
// moment of a 2,000-task restore (three pid levels, sessions, zombies) -
// when the k-th task of the image, k drawn at random, has appeared - and
// then checks through /proc that nothing of the tree is left: no task at
// any pid of the image, no builder, and the host's pid cursor back below
// the image's pids. SIGINT, SIGTERM and SIGHUP roll the restore back and
// nsinit exits 207, its status for an interrupted restore (README, "Exit
// status"), not 128+N, which a restored root killed by N would give; after
// SIGKILL, which nothing can catch, the
// builders notice that the restorer is gone and exit by themselves.
func TestE2ESignalMidRestore(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	const n = 2000
	for _, sig := range []syscall.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGKILL} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			// A window of free pids can be taken between freeBase and the
			// restore by any process of a shared machine (or held by a task
			// the kernel has not released, which /proc no longer shows):
			// then the restore refuses with 202 before the signal, and the
			// test draws another window above it (a pid hidden from /proc is
			// found free again below).
			var tr *pstree.Tree
			k, outcome, from := rand.IntN(n), restoreTaken, 12000
			for try := 0; try < 3 && outcome == restoreTaken; try++ {
				tr = benchTree(n, freeBase(t, from, n+1))
				from = tr.Tasks[0].PID() + n + 1
				dir := t.TempDir()
				if err := imagefile.Write(dir, tr); err != nil {
					t.Fatal(err)
				}
				outcome = signalRestoreAt(t, bin, dir, tr, k, sig)
			}
			if outcome == restoreTaken {
				t.Skip("three windows of free host pids were taken before the restore reached them")
			}
			interrupted := outcome == restoreInterrupted
			t.Logf("%v at task %d of %d: interrupted=%v", sig, k, n, interrupted)
			if !interrupted {
				// It finished first: a committed restore is the caller's.
				killTree(t, tr, &Restored{})
				return
			}
			if left := waitImageGone(tr, bin); len(left) > 0 {
				t.Errorf("after %v: %d image pids still taken by the restore, e.g. %v", sig, len(left), left[:min(len(left), 5)])
				for _, p := range left {
					unix.Kill(p, unix.SIGKILL)
				}
			}
			reapChildren(10 * time.Second)
			// The next fork takes the cursor + 1: it must not land among
			// the image's pids (parked at the highest one is outside).
			if c, _ := procfs.ReadLastPID(); c+1 >= tr.Tasks[0].PID() && c+1 < tr.Tasks[0].PID()+n {
				t.Errorf("host ns_last_pid %d is left where the next fork takes one of the image's pids [%d, %d)", c, tr.Tasks[0].PID(), tr.Tasks[0].PID()+n)
			}
		})
	}
}

// How a restore that signalRestoreAt signals ended.
const (
	restoreInterrupted = iota // the signal stopped it and it rolled back
	restoreFinished           // it committed before the signal
	restoreTaken              // it refused a taken pid (202) before the signal
)

// signalRestoreAt runs `nsinit restore --payload stopped -d` of the image in
// dir and sends it sig once the image's k-th task exists, and says how the
// restore ended; a restorer that survives a catchable signal, or reports
// anything else, fails t.
func signalRestoreAt(t *testing.T, bin, dir string, tr *pstree.Tree, k int, sig syscall.Signal) int {
	t.Helper()
	var out strings.Builder
	cmd := exec.Command(bin, "restore", "-D", dir, "--payload", "stopped", "-d")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	target := "/proc/" + strconv.Itoa(tr.Tasks[k].PID())
	for {
		if _, err := os.Stat(target); err == nil {
			break
		}
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == 202 {
				t.Logf("a pid of the image was taken first: %s", out.String())
				return restoreTaken
			}
			if err != nil {
				t.Fatalf("restore failed before the signal: %v\n%s", err, out.String())
			}
			return restoreFinished
		default:
			time.Sleep(100 * time.Microsecond)
		}
	}
	cmd.Process.Signal(sig)
	err := <-exited
	if err == nil {
		return restoreFinished // the signal came after the commit: too late to undo
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatal(err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	switch {
	case sig == unix.SIGKILL && ws.Signaled() && ws.Signal() == sig:
	case sig != unix.SIGKILL && ws.Exited() && ws.ExitStatus() == 207 &&
		strings.Contains(out.String(), "interrupted") && strings.Contains(out.String(), "everything it created is gone"):
	default:
		t.Fatalf("restore after %v: %v\n%s", sig, err, out.String())
	}
	return restoreInterrupted
}

// waitImageGone waits until no pid or tid of the image is held by the
// restore (a process running bin, or one the test process inherited) and
// returns those still held when the wait ended. Builders of a restorer
// killed outright exit at their next check (leaveCheck seconds), so the
// wait is bounded by a multiple of it.
func waitImageGone(tr *pstree.Tree, bin string) []int {
	var pids []int
	for _, tk := range tr.Tasks {
		pids = append(pids, tk.PID())
		for _, th := range tk.Threads {
			pids = append(pids, th.TIDs[0])
		}
	}
	var left []int
	for deadline := time.Now().Add(10 * leaveCheck * time.Second); ; {
		reapChildren(time.Millisecond)
		left = left[:0]
		for _, p := range pids {
			dir := "/proc/" + strconv.Itoa(p)
			if exe, err := os.Readlink(dir + "/exe"); err == nil && exe == bin || descendant(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}
