package restorer

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// tb builds trees by hand: namespaces by id, tasks by pid vectors.
type tb struct{ tr pstree.Tree }

func newTB() *tb {
	b := &tb{}
	b.ns(1, 0, 0)
	return b
}

func (b *tb) ns(id, parent pstree.NSID, level int) *tb {
	b.tr.Namespaces = append(b.tr.Namespaces, pstree.Namespace{ID: id, Kind: pstree.PidNS, Parent: parent, Level: level})
	return b
}

// task adds a task in pid ns ns; ppid is the parent's level-0 pid.
func (b *tb) task(ns pstree.NSID, pids []int, ppid int, sids, pgids []int) *pstree.Task {
	t := pstree.Task{PIDs: pids, PPID: ppid, SIDs: sids, PGIDs: pgids, Exe: "/bin/busybox", Argv: []string{"sleep", "1000"}, Cwd: "/"}
	t.NS[pstree.PidNS] = ns
	b.tr.Tasks = append(b.tr.Tasks, t)
	return &b.tr.Tasks[len(b.tr.Tasks)-1]
}

// replay runs a plan's steps in a fresh model and compares with the image:
// the property every plan must have, checked independently of NewPlan.
func replay(t *testing.T, p *Plan) {
	t.Helper()
	m := newModel(p.Tree, len(p.Procs)).kernelHostPIDs(p.Options.HostPIDsAny)
	for i := range p.Steps {
		if err := m.apply(p, i); err != nil {
			t.Fatalf("replay step %d: %v\n%s", i, err, p)
		}
	}
	procOf := make([]int, len(p.Tree.Tasks))
	for i := range procOf {
		procOf[i] = i
	}
	if err := m.compare(p, procOf); err != nil {
		t.Fatalf("replay: %v\n%s", err, p)
	}
}

func mustPlan(t *testing.T, tr *pstree.Tree, opt Options) *Plan {
	t.Helper()
	p, err := NewPlan(tr, opt)
	if err != nil {
		t.Fatalf("NewPlan: %v", err)
	}
	replay(t, p)
	return p
}

// f43 is the tree of docs/kernel.md F4.3: S leads a session, G a group in it,
// I is the init of a child ns placed in G by S, with inner tasks in the
// outer group (F), an inner group (D, E) and I's own session (K).
func f43() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	b.task(1, []int{31500}, 0, []int{31500}, []int{31500})              // S
	b.task(1, []int{31501}, 31500, []int{31500}, []int{31501})          // G
	b.task(2, []int{31502, 1}, 31500, []int{31502, 1}, []int{31502, 1}) // I
	b.task(2, []int{31503, 2}, 31502, []int{31500, 0}, []int{31503, 2}) // D
	b.task(2, []int{31504, 3}, 31502, []int{31500, 0}, []int{31503, 2}) // E
	b.task(2, []int{31505, 4}, 31502, []int{31500, 0}, []int{31501, 0}) // F
	b.task(2, []int{31506, 5}, 31502, []int{31502, 1}, []int{31502, 1}) // K
	return &b.tr
}

func TestPlanF43(t *testing.T) {
	for _, pay := range []Payload{PayloadExec, PayloadStopped} {
		p := mustPlan(t, f43(), Options{Payload: pay})
		s := p.String()
		// I must be moved into G by its outer parent (F4.1), and create F
		// before its own setsid.
		if !strings.Contains(s, "setpgid(31502, 31501)") {
			t.Errorf("no outer setpgid of I into G:\n%s", s)
		}
	}
}

func TestPlanDeadSessionLeader(t *testing.T) {
	// Init I (ns 2) has orphans in session 7 whose leader (pid 7) is dead,
	// and one in a group 9 whose leader is dead.
	b := newTB().ns(2, 1, 1)
	b.task(2, []int{21000, 1}, 0, []int{21000, 1}, []int{21000, 1})
	b.task(2, []int{21008, 8}, 21000, []int{21007, 7}, []int{21007, 7})
	b.task(2, []int{21010, 10}, 21000, []int{21007, 7}, []int{21009, 9})
	b.task(2, []int{21011, 11}, 21010, []int{21007, 7}, []int{21009, 9})
	p := mustPlan(t, &b.tr, Options{})
	if p.helpers() != 3 { // two dead leaders and the level-0 cursor writer
		t.Errorf("want 3 helpers:\n%s", p)
	}
	if !strings.Contains(p.String(), "CLONE_PARENT") {
		t.Errorf("orphans of a dead session leader need CLONE_PARENT:\n%s", p)
	}
}

func TestPlanZombiesAndNestedInits(t *testing.T) {
	b := newTB().ns(2, 1, 1).ns(3, 2, 2).ns(4, 2, 2)
	b.task(2, []int{22000, 1}, 0, []int{22000, 1}, []int{22000, 1})
	z := b.task(2, []int{22002, 2}, 22000, []int{22000, 1}, []int{22000, 1})
	z.State, z.ExitStatus = pstree.Zombie, 200<<8
	z = b.task(2, []int{22003, 3}, 22000, []int{22000, 1}, []int{22000, 1})
	z.State, z.ExitStatus = pstree.Zombie, 15
	// a zombie init of a nested namespace, alone in it
	z = b.task(3, []int{22004, 4, 1}, 22000, []int{22000, 1, 0}, []int{22000, 1, 0})
	z.State, z.ExitStatus = pstree.Zombie, 3<<8
	// a killed one
	z = b.task(4, []int{22005, 5, 1}, 22000, []int{22000, 1, 0}, []int{22000, 1, 0})
	z.State, z.ExitStatus = pstree.Zombie, 9
	mustPlan(t, &b.tr, Options{})
	// a core-dump bit cannot be made: refused, not silently changed
	b.tr.Tasks[2].ExitStatus = 0x80 | 11
	if _, err := NewPlan(&b.tr, Options{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("core bit: err = %v", err)
	}
}

func TestPlanBornViaSetns(t *testing.T) {
	// Two tasks of ns 2 whose parent (21500) lives in ns 1, plus threads.
	b := newTB().ns(2, 1, 1)
	b.task(1, []int{21500}, 0, []int{21500}, []int{21500})
	b.task(2, []int{21501, 1}, 21500, []int{21500, 0}, []int{21500, 0})
	b.task(2, []int{21502, 2}, 21500, []int{21500, 0}, []int{21500, 0})
	b.task(2, []int{21503, 3}, 21500, []int{21500, 0}, []int{21500, 0}).Threads = []pstree.Thread{{TIDs: []int{21504, 4}}}
	p := mustPlan(t, &b.tr, Options{Payload: PayloadStopped})
	if n := strings.Count(p.String(), "setns(pidns 2)"); n != 2 {
		t.Errorf("want 2 setns-born clones, got %d:\n%s", n, p)
	}
}

// deepChain is a chain of inits, one per level 1..depth-1 below a root
// session leader at level 0: task l is the init of the level-l namespace.
func deepChain(depth, base int) *pstree.Tree {
	b := newTB()
	for l := 1; l < depth; l++ {
		b.ns(pstree.NSID(l+1), pstree.NSID(l), l)
	}
	for l := 0; l < depth; l++ {
		pids := []int{base + l}
		for k := 1; k <= l; k++ {
			pids = append(pids, l-k+1)
		}
		ids := make([]int, l+1)
		ids[0] = base
		ppid := 0
		if l > 0 {
			ppid = base + l - 1
		}
		b.task(pstree.NSID(l+1), pids, ppid, ids, slices.Clone(ids))
	}
	return &b.tr
}

func TestPlanDeepNesting(t *testing.T) {
	p := mustPlan(t, deepChain(32, 23000), Options{})
	if n := strings.Count(p.String(), "CLONE_NEWPID"); n != 31 {
		t.Errorf("%d CLONE_NEWPID, want 31", n)
	}
}

func TestPlanRejectsBadImages(t *testing.T) {
	for name, mut := range map[string]func(tr *pstree.Tree){
		"no tasks":      func(tr *pstree.Tree) { tr.Tasks = nil },
		"level":         func(tr *pstree.Tree) { tr.Tasks[3].PIDs = []int{31503} },
		"dup pid":       func(tr *pstree.Tree) { tr.Tasks[4].PIDs[1] = 2 },
		"sids":          func(tr *pstree.Tree) { tr.Tasks[1].SIDs = nil },
		"orphan":        func(tr *pstree.Tree) { tr.Tasks[1].PPID = 4 },
		"root ppid":     func(tr *pstree.Tree) { tr.Tasks[0].PPID = 4 },
		"zero pid":      func(tr *pstree.Tree) { tr.Tasks[2].PIDs[0] = 0 },
		"ns parent":     func(tr *pstree.Tree) { tr.Namespaces[1].Parent = 9 },
		"thread levels": func(tr *pstree.Tree) { tr.Tasks[1].Threads = []pstree.Thread{{TIDs: []int{1, 2}}} },
	} {
		tr := f43()
		mut(tr)
		if _, err := NewPlan(tr, Options{}); !errors.Is(err, ErrBadImage) {
			t.Errorf("%s: err = %v, want ErrBadImage", name, err)
		}
	}
	if _, err := NewPlan(nil, Options{}); !errors.Is(err, ErrBadImage) {
		t.Errorf("nil tree: %v", err)
	}
}

// TestPlanExecNeedsExe: only the exec payload needs a task's executable, so
// the planner, which knows the payload, refuses a task without one (a
// zombie runs nothing).
func TestPlanExecNeedsExe(t *testing.T) {
	tr := f43()
	tr.Tasks[2].Exe = ""
	if _, err := NewPlan(tr, Options{}); !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "task 2 (pid 31502): no executable") {
		t.Errorf("exec payload: %v, want ErrBadImage naming task 2", err)
	}
	mustPlan(t, tr, Options{Payload: PayloadStopped})
}

// pfcTree has every kind of pid_for_children: a task that did `unshare -p`
// and exec'd after its first child (pfc = its child's namespace, at two
// levels), one that did setns(CLONE_NEWPID) into a grandchild namespace,
// and one that did `unshare -p` and has no child yet (a fresh namespace
// nobody is in).
func pfcTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1).ns(3, 2, 2).ns(4, 1, 1)
	b.task(1, []int{22000}, 0, []int{22000}, []int{22000}).NS[pstree.PidForChildrenNS] = 2
	b.task(2, []int{22001, 1}, 22000, []int{22000, 0}, []int{22000, 0}).NS[pstree.PidForChildrenNS] = 3
	b.task(3, []int{22002, 2, 1}, 22001, []int{22000, 0, 0}, []int{22000, 0, 0})
	b.task(1, []int{22003}, 22000, []int{22000}, []int{22000}).NS[pstree.PidForChildrenNS] = 3
	b.task(1, []int{22004}, 22000, []int{22000}, []int{22000}).NS[pstree.PidForChildrenNS] = 4
	return &b.tr
}

func TestPlanPidForChildren(t *testing.T) {
	p := mustPlan(t, pfcTree(), Options{})
	var got []string
	for _, s := range p.Steps {
		if s.Op == OpSetPFC {
			got = append(got, p.name(s.Actor)+": "+p.describe(&s))
		}
	}
	want := []string{
		"task 22000: setns(pidns 2 via task 22001/1) # pid_for_children",
		"task 22001/1: setns(pidns 3 via task 22002/2/1) # pid_for_children",
		"task 22003: setns(pidns 3 via task 22002/2/1) # pid_for_children",
		"task 22004: unshare(CLONE_NEWPID) # pid_for_children",
	}
	if !slices.Equal(got, want) {
		t.Errorf("pid_for_children steps:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Without those steps the model sees the difference.
	p.Steps = slices.DeleteFunc(p.Steps, func(s Step) bool { return s.Op == OpSetPFC })
	m := newModel(p.Tree, len(p.Procs))
	for i := range p.Steps {
		if err := m.apply(p, i); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := m.compare(p, []int{0, 1, 2, 3, 4}); err == nil || !strings.Contains(err.Error(), "pid_for_children") {
		t.Errorf("compare without setpfc steps: %v", err)
	}
	// A pid_for_children above the task's own namespace cannot exist
	// (setns(CLONE_NEWPID) only goes down): the validator refuses it.
	bad := pfcTree()
	bad.Tasks[2].NS[pstree.PidForChildrenNS] = 2
	if _, err := NewPlan(bad, Options{}); !errors.Is(err, ErrBadImage) {
		t.Errorf("pfc above the task's namespace: %v, want ErrBadImage", err)
	}
}

// features is what this kernel can do, probed once for the live tests.
var features = ProbeFeatures()

// TestPlanMultiLevelSetTID: with every level settable, no clone needs a
// cursor: the only ns_last_pid steps left are the image's final cursors.
func TestPlanMultiLevelSetTID(t *testing.T) {
	for name, tr := range map[string]*pstree.Tree{"f43": f43(), "deep": deepChain(8, 23000), "pfc": pfcTree(), "ns": nsTree()} {
		p := mustPlan(t, tr, Options{Features: Features{MultiLevelSetTID: true}})
		for i, s := range p.Steps {
			if s.Op == OpLastPID && i < p.Verify {
				t.Errorf("%s: cursor step %d before verification: %s", name, i, p.describe(&s))
			}
			if s.Op == OpClone && s.Target != p.HostWriter && !s.SetTID {
				t.Errorf("%s: clone step %d without set_tid", name, i)
			}
		}
	}
}
