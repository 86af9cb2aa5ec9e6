package pstree_test

import (
	"errors"
	"fmt"

	"github.com/nsinit/nsinit/pstree"
)

// A Tree is what dump produces and restore consumes. Built by hand it
// needs its pid namespaces and, for every task, its pid, session and group
// at every level (outermost first, as /proc/PID/status prints NSpid).
// Validate checks what the kernel guarantees of any real tree; a tree
// that breaks it is refused with ErrInvalid.
func ExampleValidate() {
	tr := &pstree.Tree{
		Namespaces: []pstree.Namespace{
			{ID: 1, Kind: pstree.PidNS, Level: 0},
			{ID: 2, Kind: pstree.PidNS, Parent: 1, Level: 1},
		},
	}
	add := func(ns pstree.NSID, pids []int, ppid int, sids, pgids []int) *pstree.Task {
		t := pstree.Task{PIDs: pids, PPID: ppid, SIDs: sids, PGIDs: pgids,
			Exe: "/bin/sleep", Argv: []string{"sleep", "1000"}, Cwd: "/"}
		t.NS[pstree.PidNS] = ns
		tr.Tasks = append(tr.Tasks, t)
		return &tr.Tasks[len(tr.Tasks)-1]
	}
	// A session leader at host pid 31500, the init of a child pid
	// namespace (31501 outside, 1 inside) and a zombie child of that init.
	add(1, []int{31500}, 0, []int{31500}, []int{31500})
	add(2, []int{31501, 1}, 31500, []int{31501, 1}, []int{31501, 1})
	z := add(2, []int{31502, 2}, 31501, []int{31501, 1}, []int{31501, 1})
	z.State, z.ExitStatus = pstree.Zombie, 3<<8

	fmt.Println("valid:", pstree.Validate(tr) == nil)
	fmt.Println("zombie:", pstree.DescribeExit(tr.Task(31502).ExitStatus))
	fmt.Println("level of 31502:", tr.Task(31502).Level(), "pid there:", tr.Task(31502).InnerPID())

	// Two tasks cannot hold the same pid.
	add(2, []int{31503, 2}, 31501, []int{31501, 1}, []int{31501, 1})
	err := pstree.Validate(tr)
	fmt.Println("invalid:", errors.Is(err, pstree.ErrInvalid))
	// Output:
	// valid: true
	// zombie: exited 3
	// level of 31502: 1 pid there: 2
	// invalid: true
}
