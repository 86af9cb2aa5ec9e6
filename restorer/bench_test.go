package restorer

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// benchTree is bigTree with every task that is not an init a zombie (exit 0):
// the benchmark measures creating the tree with exact pids and verifying it,
// not exec'ing thousands of programs.
func benchTree(n, base int) *pstree.Tree {
	tr := bigTree(n, base)
	for i := range tr.Tasks {
		if tr.Tasks[i].InnerPID() != 1 {
			tr.Tasks[i].State = pstree.Zombie
		}
	}
	return tr
}

// floorTree is the floor the restorer is compared with: as many tasks,
// all children of one root at level 0, each one clone3 with set_tid and an
// exit - what the same raw CLONE_VM builder does with no namespaces,
// sessions or cursors to take care of.
func floorTree(n, base int) *pstree.Tree {
	b := newTB()
	b.task(1, []int{base}, 0, []int{base}, []int{base})
	for i := 1; i < n; i++ {
		z := b.task(1, []int{base + i}, base, []int{base}, []int{base})
		z.State = pstree.Zombie
	}
	return &b.tr
}

// runOnce restores one tree of n tasks (stopped payload) and returns how
// long Execute took.
func runOnce(b *testing.B, mk func(n, base int) *pstree.Tree, n int, f Features) time.Duration {
	return restoreOnce(b, mk, n, Options{Payload: PayloadStopped, Features: f}).wall
}

// cost is what one run took: wall-clock time, and processor time: the
// restorer's during the run and that of every task of the tree once it
// is made (treeCPU).
type cost struct{ wall, cpu time.Duration }

func (c *cost) add(d cost) { c.wall += d.wall; c.cpu += d.cpu }

// selfCPU is this process's user and system time.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// treeCPU adds up the time on a processor (schedstat's first field, in
// ns) of pid and all its descendants, zombies included. Read before the
// tree is killed: the time of a task reaped in a dying pid namespace
// reaches nobody's rusage (its reaper ignores SIGCHLD).
func treeCPU(pid int) time.Duration {
	var sum time.Duration
	rd := procfs.New("/proc")
	for todo := []int{pid}; len(todo) > 0; {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/schedstat"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				ns, _ := strconv.ParseInt(f[0], 10, 64)
				sum += time.Duration(ns)
			}
		}
		kids, _ := rd.Children(p, p)
		todo = append(todo, kids...)
	}
	return sum
}

// onceBase, when set, is the base of restoreOnce's next first attempt
// (TestBenchRestoreOnce: the window its parent found free).
var onceBase int

// restoreOnce restores one tree of n tasks with opt and returns what
// Execute took: its wall-clock time, and the processor time of the
// restorer during Execute and of the tree's tasks (their builders). An
// unrelated fork of the shared host can take a level-0 pid of the tree on
// the cursor path (ErrPIDTaken): that attempt is rolled back and timed
// again at a fresh base.
func restoreOnce(b testing.TB, mk func(n, base int) *pstree.Tree, n int, opt Options) cost {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		base := onceBase
		if onceBase = 0; base == 0 {
			base = freeBase(b, 2000, n+1)
		}
		tr := mk(n, base)
		p, perr := NewPlan(tr, opt)
		if perr != nil {
			b.Fatal(perr)
		}
		self := selfCPU()
		start := time.Now()
		var res *Restored
		res, err = Execute(p, ExecOptions{})
		c := cost{wall: time.Since(start), cpu: selfCPU() - self}
		if err == nil {
			c.cpu += treeCPU(res.Root)
			killTree(b, tr, res)
			return c
		}
		if !errors.Is(err, ErrPIDTaken) {
			break
		}
	}
	b.Skipf("restore of %d tasks: %v", n, err)
	return cost{}
}

// BenchmarkRestore restores 100, 1,000 and 5,000 tasks across 3 levels with
// every level set by set_tid (this kernel's Features), the same tree through
// the cursor path (Features without MultiLevelSetTID) and, in the same run,
// the floor (the same number of flat set_tid clones by the same builder).
// It reports tasks per second of each and the ratio to the floor.
func BenchmarkRestore(b *testing.B) {
	needRoot(b)
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var tree, cursor, floor time.Duration
			for i := 0; i < b.N; i++ {
				tree += runOnce(b, benchTree, n, features)
				cursor += runOnce(b, benchTree, n, Features{})
				floor += runOnce(b, floorTree, n, features)
			}
			tps := float64(n*b.N) / tree.Seconds()
			fps := float64(n*b.N) / floor.Seconds()
			b.ReportMetric(tps, "tasks/s")
			b.ReportMetric(float64(n*b.N)/cursor.Seconds(), "cursor-tasks/s")
			b.ReportMetric(fps, "floor-tasks/s")
			b.ReportMetric(tree.Seconds()/floor.Seconds(), "x-floor")
		})
	}
}
