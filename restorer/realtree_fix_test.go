package restorer

import (
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// Trees the random real trees (TestRealTrees) found broken, reduced to
// their smallest form.

// userLauncherTree is userTree plus a second child of the `unshare -U -r -p`
// process (found by real-tree seed 1031226433): it is born in the new pid
// namespace, owned by the launcher's new user namespace, and its parent -
// inside that user namespace - has no capability over the host's pid
// namespace to setns back to after a setns-born clone.
//
//	busybox unshare -p -r busybox sh -c 'busybox sleep 1 & busybox sleep 2 & exec busybox sleep 3'
func userLauncherTree() *pstree.Tree {
	tr := userTree()
	t := tr.Tasks[2] // a child of the launcher, in pid ns 2, user ns 61
	t.PIDs, t.PPID = []int{22308, 7}, 22301
	t.SIDs, t.PGIDs = []int{22300, 0}, []int{22300, 0}
	tr.Tasks = append(tr.Tasks, t)
	return tr
}

// TestPlanUserLauncherSetsPFCForGood: the launcher may not clone with a
// setns into the new namespace and back (EPERM on the way back, which the
// model now knows); it sets its pid_for_children once and clones there.
func TestPlanUserLauncherSetsPFCForGood(t *testing.T) {
	tr := userLauncherTree()
	p, err := NewPlan(tr, Options{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	for _, s := range p.Steps {
		if s.Op == OpClone && s.Actor == 1 && s.Into != 0 {
			t.Errorf("the launcher clones %s with a setns into pid ns %d", p.name(s.Target), s.Into)
		}
	}
}

// TestRestoreUserLauncherChildren restores the tree in both payloads and
// placements, through scenario(), which makes the test process dumpable
// again before each restore: a payload's setresuid in a builder that shares
// the restorer's mm left it non-dumpable once, and the launcher's pidfd
// setns (ptrace_may_access) into its child namespace then failed with EPERM
// in the next restore of the same process.
func TestRestoreUserLauncherChildren(t *testing.T) { scenario(t, userLauncherTree) }

// orphanOfMemberTree: an orphan re-parented to its namespace's init, in a
// session whose live leader is neither its init's child nor dead; the shell
// that started it and exited is a zombie child of the leader (found by
// real-tree seeds 480304779 and 6):
//
//	unshare -p sh -c 'sh -c "setsid sh -c \"sh -c \\\"sleep & exit 0\\\" & exec sleep\" & exec sleep" & exec sleep'
func orphanOfMemberTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	const base = 23400
	b.task(1, []int{base}, 0, []int{base}, []int{base})
	b.task(2, []int{base + 1, 1}, base, []int{base, 0}, []int{base, 0})           // init
	b.task(2, []int{base + 2, 2}, base+1, []int{base, 0}, []int{base, 0})         // a plain child
	b.task(2, []int{base + 3, 3}, base+2, []int{base + 3, 3}, []int{base + 3, 3}) // setsid
	z := b.task(2, []int{base + 4, 4}, base+3, []int{base + 3, 3}, []int{base + 3, 3})
	z.State = pstree.Zombie
	b.task(2, []int{base + 5, 5}, base+1, []int{base + 3, 3}, []int{base + 3, 3}) // the orphan
	return sleepers(&b.tr)
}

func TestPlanOrphanOfMember(t *testing.T) {
	p, err := NewPlan(orphanOfMemberTree(), Options{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	for _, s := range p.Steps {
		if s.Op == OpClone && s.Target == 5 && s.Actor != 4 {
			t.Errorf("the orphan is cloned by %s, want the zombie that leaves it to the init", p.name(s.Actor))
		}
	}
}

func TestRestoreOrphanOfMember(t *testing.T) { scenario(t, orphanOfMemberTree) }

// TestPlanOrphanNotByItsOwnChild: the orphan's own zombie child is in the
// session too, listed before the zombie that really left it; it cannot be
// the orphan's creator (found by real-tree seed 923315660: "is never
// created").
func TestPlanOrphanNotByItsOwnChild(t *testing.T) {
	tr := orphanOfMemberTree()
	const base = 23400
	x, z := tr.Tasks[5], tr.Tasks[4]
	w := x
	w.PIDs, w.PPID, w.State = []int{base + 6, 6}, base+5, pstree.Zombie
	tr.Tasks = append(tr.Tasks[:4], x, w, z)
	if _, err := NewPlan(tr, Options{}); err != nil {
		t.Fatalf("plan: %v", err)
	}
}
