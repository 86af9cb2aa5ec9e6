package restorer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
)

// loopPgid is the process group of the running fork loop (0: none): its
// forks may hold image pids, and are not the restore's leftovers.
var loopPgid atomic.Int64

// onlyLoopChildren says whether a fork loop runs and every child of this
// process is in its group (reapChildren stops waiting then).
func onlyLoopChildren() bool {
	g := loopPgid.Load()
	if g == 0 {
		return false
	}
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, c := range strings.Fields(string(b)) {
			st, err := os.ReadFile("/proc/" + c + "/status")
			if err == nil && procfs.StatusField(st, "NSpgid") != strconv.FormatInt(g, 10) {
				return false
			}
		}
	}
	return true
}

// forkLoop starts `while :; do /bin/true; done` on the host in a process
// group of its own, for at most d; the cleanup kills the group and reaps
// the shell.
func forkLoop(t *testing.T, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", "while :; do /bin/true; done")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("fork loop: %v", err)
	}
	loopPgid.Store(int64(cmd.Process.Pid))
	t.Cleanup(func() {
		loopPgid.Store(0)
		cancel()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		reapChildren(time.Second) // its last /bin/true, reparented to us
	})
}

// deadGroupLeaderTree: a flat tree whose group 1 leader is dead (a helper
// plays it), with two members in that group.
func deadGroupLeaderTree() *pstree.Tree {
	b := newTB()
	b.task(1, []int{25000}, 0, []int{25000}, []int{25000})
	b.task(1, []int{25002}, 25000, []int{25000}, []int{25001})
	b.task(1, []int{25003}, 25000, []int{25000}, []int{25001})
	b.task(1, []int{25004}, 25003, []int{25000}, []int{25004})
	return &b.tr
}

// TestRestoreBesideForkLoop restores trees while a host-level loop forks
// /bin/true beside them (issue #13, item 5), in both placements: a
// rootless-style tree (user namespaces mapped to 100000, whose inner
// clones take their level-0 pids from the host cursor even with set_tid)
// and a flat tree with a dead group leader. Each restore succeeds, or
// fails with ErrPIDTaken (a pid the image needs was taken, after the
// retries of ErrHostRace); never anything else. Before the clones placed
// through the host cursor were checked at once, a fork that took one's
// pid showed up as the EPERM of a later step naming that pid (setpgid
// into the helper's group, the maps written through /proc/PID).
// NSINIT_BUSY_RESTORES sets the number of restores per case (default 5).
func TestRestoreBesideForkLoop(t *testing.T) {
	needRoot(t)
	n := 5
	if v, err := strconv.Atoi(os.Getenv("NSINIT_BUSY_RESTORES")); err == nil && v > 0 {
		n = v
	}
	forkLoop(t, 10*time.Minute)
	for _, c := range []struct {
		name string
		mk   func() *pstree.Tree
	}{{"userns", userTree}, {"deadgroup", deadGroupLeaderTree}} {
		for _, pm := range []Placement{PlaceSetTID, PlaceLastPID} {
			t.Run(fmt.Sprintf("%s/%s", c.name, []string{"set_tid", "ns_last_pid"}[pm]), func(t *testing.T) {
				ok, taken := 0, 0
				for i := 0; i < n; i++ {
					tr := place(t, sleepers(c.mk()))
					p, err := NewPlan(tr, Options{Placement: pm, Features: features})
					if err != nil {
						t.Fatalf("plan: %v", err)
					}
					res, err := Execute(p, ExecOptions{})
					switch {
					case err == nil:
						ok++
						checkTree(t, tr, PayloadExec)
						killTree(t, tr, res)
					case errors.Is(err, ErrPIDTaken):
						taken++
						t.Logf("restore %d: %v", i, err)
						assertGone(t, tr)
					default:
						t.Errorf("restore %d: %v", i, err)
						assertGone(t, tr)
					}
				}
				t.Logf("%d/%d restored, %d refused with a taken pid", ok, n, taken)
			})
		}
	}
}

// keepCursorAbove moves the host cursor above tr's level-0 pids when it is
// below them, between a dump --kill and the restore of its image: the
// tree's pids are free then, and on a busy host (pid_max 32768, other
// restores moving the shared cursor) the next processes - the nsinit
// restore itself - would otherwise take them.
func keepCursorAbove(t *testing.T, tr *pstree.Tree) {
	t.Helper()
	hi := 0
	for _, tk := range tr.Tasks {
		hi = max(hi, tk.PID())
		for _, th := range tk.Threads {
			hi = max(hi, th.TIDs[0])
		}
	}
	if cur, err := readLastPID(); err == nil && cur < hi {
		if err := writeLastPID(hi); err != nil {
			t.Logf("keep the host cursor above the image: %v", err)
		}
	}
}

// TestPlanChecksHostCursorClones: every clone whose level-0 pid comes from
// the host cursor is followed at once by the step that parks the cursor
// and checks that pid, so no later step can name a proc that is not there.
func TestPlanChecksHostCursorClones(t *testing.T) {
	for _, mk := range []func() *pstree.Tree{userTree, deadGroupLeaderTree, f43, zombieTree} {
		for _, pm := range []Placement{PlaceSetTID, PlaceLastPID} {
			p := mustPlan(t, mk(), Options{Placement: pm, Features: Features{MultiLevelSetTID: true}})
			checked := 0
			for i, s := range p.Steps {
				if s.Op != OpClone || s.Actor == Restorer || p.Procs[s.Target].PIDs[0] == 0 || (s.SetTID && s.SetFrom == 0) {
					continue
				}
				if n := p.Steps[i+1]; n.Op != OpLastPID || n.Target != s.Target {
					t.Errorf("step %d (%s) places a level-0 pid through the host cursor; step %d is %s, not its check\n%s", i, p.describe(&s), i+1, p.describe(&n), p)
				}
				checked++
			}
			if pm == PlaceLastPID && checked == 0 {
				t.Errorf("no clone through the host cursor in cursor placement\n%s", p)
			}
		}
	}
}

// TestParkHostCursor: Execute's park puts the host cursor at the image's
// highest level-0 pid, and putting the host's value back never moves it
// below where it is then.
func TestParkHostCursor(t *testing.T) {
	needRoot(t)
	tr := place(t, deadGroupLeaderTree())
	p := mustPlan(t, tr, Options{Features: features})
	hi := tr.Tasks[len(tr.Tasks)-1].PID()
	cursor := func() int {
		v, err := readLastPID()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	old := cursor()
	defer func() {
		if cursor() < old {
			_ = writeLastPID(old)
		}
	}()
	// below the image: parked above it, and left there
	if err := writeLastPID(hi - 100); err != nil {
		t.Fatal(err)
	}
	back := parkHostCursor(p)
	if c := cursor(); c < hi {
		t.Errorf("parked cursor %d, want at least %d", c, hi)
	}
	back()
	if c := cursor(); c < hi {
		t.Errorf("cursor %d after putting back %d, want it left above the image (%d)", c, hi-100, hi)
	}
	// above the image: put back
	if err := writeLastPID(hi + 500); err != nil {
		t.Fatal(err)
	}
	back = parkHostCursor(p)
	back()
	if c := cursor(); c < hi+500 {
		t.Errorf("cursor %d after putting back %d", c, hi+500)
	}
}
