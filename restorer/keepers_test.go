package restorer

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// keeperLeftTree: user ns 61 (child of the host's 60) has two children,
// 62 with maps and 63 without. Task A went down through 61 into 63, so 61
// has no member left once A's part of the plan is played; task B, a
// grandchild of the root played later, goes down into 62 and must join 61
// on its way (and 62's maps are written from there). The first plan finds
// 61 empty when B needs it; the second has a keeper join 61 through A
// before A leaves it.
func keeperLeftTree() *pstree.Tree {
	b := nestedUserNS()
	b.addNS(63, pstree.UserNS, false).Parent = 61
	b.tr.Namespace(1).Owner = 60
	ids := func(t *pstree.Task, id uint32) {
		t.Creds = pstree.Creds{UID: id, EUID: id, SUID: id, FSUID: id, GID: id, EGID: id, SGID: id, FSGID: id}
	}
	b.task(1, []int{22700}, 0, []int{22700}, []int{22700}).NS[pstree.UserNS] = 60
	a := b.task(1, []int{22701}, 22700, []int{22700}, []int{22700})
	a.NS[pstree.UserNS] = 63
	ids(a, 100000) // kept from its builder, root of 61 (63 maps nothing)
	b.task(1, []int{22702}, 22700, []int{22700}, []int{22700}).NS[pstree.UserNS] = 60
	bt := b.task(1, []int{22703}, 22702, []int{22700}, []int{22700})
	bt.NS[pstree.UserNS] = 62
	ids(bt, 101000)
	return &b.tr
}

// keeperNeverTree: the init I of pid ns 2 was cloned, with CLONE_NEWUSER
// making its user ns 62, by a member of 62's parent 61, which died; I's
// parent R (cloned with CLONE_PARENT) is in the host's user namespace, and
// nobody in the image is in 61. The stand-in that clones I for R needs a
// member of 61 nobody makes: a keeper creates 61 for it.
func keeperNeverTree() *pstree.Tree {
	b := nestedUserNS()
	b.tr.Namespace(1).Owner, b.tr.Namespace(2).Owner = 60, 62
	b.task(1, []int{22710}, 0, []int{22710}, []int{22710}).NS[pstree.UserNS] = 60
	i := b.task(2, []int{22711, 1}, 22710, []int{22710, 0}, []int{22710, 0})
	i.NS[pstree.UserNS] = 62
	i.Creds = pstree.Creds{UID: 101000, EUID: 101000, SUID: 101000, FSUID: 101000, GID: 101000, EGID: 101000, SGID: 101000, FSGID: 101000}
	return &b.tr
}

// TestPlanUserKeepers plans both shapes in every option: each has one
// keeper, cloned by the level-0 writer and reaped by it, a member of 61
// while the plan needs one.
func TestPlanUserKeepers(t *testing.T) {
	for name, tree := range map[string]func() *pstree.Tree{"left": keeperLeftTree, "never": keeperNeverTree} {
		for _, opt := range allOptions() {
			t.Run(fmt.Sprintf("%s/%+v", name, opt), func(t *testing.T) {
				p := mustPlan(t, tree(), opt)
				keeper := -1
				for i := range p.Procs {
					if p.Procs[i].Why == fmt.Sprintf(whyKeeper, 61) {
						keeper = i
					}
				}
				if keeper < 0 {
					t.Fatalf("no keeper of user ns 61:\n%s", p)
				}
				var got []string
				for _, s := range p.Steps {
					if s.Actor == keeper || s.Target == keeper {
						got = append(got, p.name(s.Actor)+": "+p.describe(&s))
					}
				}
				t.Logf("\n%s", strings.Join(got, "\n"))
				kn := p.name(keeper)
				want := []string{"helper 0: clone " + kn + "  # " + p.Procs[keeper].Why, kn + ": exit 0", "helper 0: wait " + kn}
				if name == "left" {
					want = append(want, kn+": setns(user 61 via task 22701)", "task 22703: setns(user 61 via "+kn+")",
						kn+`: write maps of user 62 via task 22703: uid_map "0 1000 1000\n" gid_map "0 1000 1000\n"`)
				} else {
					want = append(want, kn+": unshare(user 61)",
						`helper 0: write maps of user 61 via `+kn+`: uid_map "0 100000 65536\n" gid_map "0 100000 65536\n"`)
				}
				for _, w := range want {
					if !slices.Contains(got, w) {
						t.Errorf("missing step %q", w)
					}
				}
			})
		}
	}
}
