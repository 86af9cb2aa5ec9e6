package restorer

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nsinit/nsinit/pstree"
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

// runOnce restores one tree of n tasks and returns how long Execute took.
// An unrelated fork of the shared host can take a level-0 pid of the tree
// on the cursor path (ErrPIDTaken): that attempt is rolled back and timed
// again at a fresh base.
func runOnce(b *testing.B, mk func(n, base int) *pstree.Tree, n int, f Features) time.Duration {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		tr := mk(n, freeBase(b, 20000, n+1))
		p, perr := NewPlan(tr, Options{Payload: PayloadStopped, Features: f})
		if perr != nil {
			b.Fatal(perr)
		}
		start := time.Now()
		var res *Restored
		res, err = Execute(p, ExecOptions{})
		d := time.Since(start)
		if err == nil {
			killTree(b, tr, res)
			return d
		}
		if !errors.Is(err, ErrPIDTaken) {
			break
		}
	}
	b.Skipf("restore of %d tasks: %v", n, err)
	return 0
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
