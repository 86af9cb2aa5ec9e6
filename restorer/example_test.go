package restorer_test

import (
	"fmt"

	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/restorer"
)

// A plan is a pure function of the image: no privilege is needed to make
// one, and nothing runs. This tree is a session leader at host pid 31500
// whose child 31501 is the init of a new pid namespace (pid 1 there), with
// one child of its own, 31502 (pid 2 there). Execute would carry the plan
// out; `nsinit restore --dry-run` prints the same text.
func ExampleNewPlan() {
	tr := &pstree.Tree{
		Namespaces: []pstree.Namespace{
			{ID: 1, Kind: pstree.PidNS, Level: 0},
			{ID: 2, Kind: pstree.PidNS, Parent: 1, Level: 1},
		},
	}
	add := func(ns pstree.NSID, pids []int, ppid int, sids, pgids []int) {
		t := pstree.Task{PIDs: pids, PPID: ppid, SIDs: sids, PGIDs: pgids,
			Exe: "/bin/sleep", Argv: []string{"sleep", "1000"}, Cwd: "/"}
		t.NS[pstree.PidNS] = ns
		tr.Tasks = append(tr.Tasks, t)
	}
	add(1, []int{31500}, 0, []int{31500}, []int{31500})
	add(2, []int{31501, 1}, 31500, []int{31501, 1}, []int{31501, 1})
	add(2, []int{31502, 2}, 31501, []int{31501, 1}, []int{31501, 1})

	p, err := restorer.NewPlan(tr, restorer.Options{
		// What restorer.ProbeFeatures() reports on a 5.5+ kernel; fixed
		// here so that the example's output does not depend on the machine.
		Features: restorer.Features{MultiLevelSetTID: true},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(p)
	// Output:
	// # 4 procs (1 helpers), 12 steps
	//    0 restorer         clone helper 0  # level-0 cursor writer
	//    1 helper 0         clone task 31500 CLONE_PARENT set_tid
	//    2 task 31500       clone task 31501/1 CLONE_NEWPID set_tid
	//    3 task 31500       setsid
	//    4 task 31501/1     setsid
	//    5 task 31501/1     clone task 31502/2 set_tid
	//    6 restorer         verify
	//    7 helper 0         exit 0
	//    8 restorer         wait helper 0
	//    9 task 31500       payload exec
	//   10 task 31501/1     payload exec
	//   11 task 31502/2     payload exec
}
