package restorer

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

// orphanSessionTree is the image testdata/sessions.c's orphan-session
// builds: R leads a session at level 0 and is the parent of I, the init of
// pid ns 2; S, R's child, leads its own session; T, in ns 2, is in S's
// session and group and a child of I (its creator, a member of S's session
// born through setns into ns 2, died).
func orphanSessionTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	const base = 23500
	b.task(1, []int{base}, 0, []int{base}, []int{base})                           // R
	b.task(2, []int{base + 1, 1}, base, []int{base, 0}, []int{base, 0})           // I
	b.task(1, []int{base + 2}, base, []int{base + 2}, []int{base + 2})            // S
	b.task(2, []int{base + 4, 3}, base+1, []int{base + 2, 0}, []int{base + 2, 0}) // T
	b.tr.Namespace(2).LastPID = 3
	return sleepers(&b.tr)
}

// splitGroupTree is the image of sessions.c's split-group: R leads a
// session; M, R's child, is in the group of G, which died; M's child I is
// the init of pid ns 2 and stayed in G's group; O, in ns 2, is a child of
// I in R's session and group (its creator, born through setns by R, died).
func splitGroupTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	const base = 23550
	b.task(1, []int{base}, 0, []int{base}, []int{base})                       // R
	b.task(1, []int{base + 2}, base, []int{base}, []int{base + 1})            // M, in dead G's group
	b.task(2, []int{base + 3, 1}, base+2, []int{base, 0}, []int{base + 1, 0}) // I
	b.task(2, []int{base + 5, 3}, base+3, []int{base, 0}, []int{base, 0})     // O
	b.tr.Namespace(2).LastPID = 3
	return sleepers(&b.tr)
}

// splitGroupDeepTree is split-group one level deeper, where I's parent M
// cannot name the dead leader's group either (it is at level 1, G at 0):
// R puts A, the init of pid ns 2, in G's group at its birth; A's child M
// clones I, the init of ns 3; O, in ns 3, is a child of I in R's group.
func splitGroupDeepTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1).ns(3, 2, 2)
	const base = 23560
	b.task(1, []int{base}, 0, []int{base}, []int{base})                                // R
	b.task(2, []int{base + 2, 1}, base, []int{base, 0}, []int{base + 1, 0})            // A
	b.task(2, []int{base + 3, 2}, base+2, []int{base, 0}, []int{base + 1, 0})          // M
	b.task(3, []int{base + 4, 3, 1}, base+3, []int{base, 0, 0}, []int{base + 1, 0, 0}) // I
	b.task(3, []int{base + 6, 5, 3}, base+4, []int{base, 0, 0}, []int{base, 0, 0})     // O
	b.tr.Namespace(3).LastPID = 3
	return sleepers(&b.tr)
}

// TestPlanLeaverHelpers plans both shapes in every placement and payload:
// the orphan is cloned by a leaver helper, which its session's (and
// group's) leader creates through setns in the init's namespace at a pid
// no image task has (level 0: the kernel's choice, after the host cursor
// was parked above the image's pids), and which exits and is reaped by its
// creator, leaving the orphan to the init.
func TestPlanLeaverHelpers(t *testing.T) {
	for _, c := range []struct {
		name            string
		tree            func() *pstree.Tree
		creator, orphan int // task indexes
		pids            []int
	}{
		{"orphan-session", orphanSessionTree, 2, 3, []int{0, 2}},
		{"split-group-deep", splitGroupDeepTree, 0, 4, []int{0, 4, 2}},
	} {
		for _, opt := range allOptions() {
			t.Run(fmt.Sprintf("%s/%+v", c.name, opt), func(t *testing.T) {
				p := mustPlan(t, c.tree(), opt)
				h := -1
				for i := range p.Procs {
					if p.Procs[i].Why == whyLeaver {
						h = i
					}
				}
				if h < 0 {
					t.Fatalf("no leaver helper:\n%s", p)
				}
				if got := p.Procs[h].PIDs; !slices.Equal(got, c.pids) {
					t.Errorf("leaver at pids %v, want %v (the kernel's at level 0, the first free ones below)", got, c.pids)
				}
				var did []string
				for i, s := range p.Steps {
					switch {
					case s.Op == OpClone && s.Target == h:
						// Only cursor writes of inner levels may come
						// between the park and the clone.
						parked := false
						for j := i - 1; j >= 0 && p.Steps[j].Op == OpLastPID && !parked; j-- {
							parked = p.Steps[j].Actor == p.HostWriter && p.Steps[j].Arg == hostPark(p)
						}
						if !parked {
							t.Errorf("the leaver's clone (step %d) does not follow the host cursor's park", i)
						}
						did = append(did, fmt.Sprintf("cloned by %s into %d", p.name(s.Actor), s.Into))
					case s.Op == OpClone && s.Target == c.orphan:
						did = append(did, "clones the orphan "+p.name(s.Actor))
					case s.Op == OpExit && s.Actor == h:
						did = append(did, "exits")
					case s.Op == OpWait && s.Target == h:
						did = append(did, "reaped by "+p.name(s.Actor))
					}
				}
				cr := p.name(c.creator)
				into := p.Procs[h].NS
				want := []string{fmt.Sprintf("cloned by %s into %d", cr, into), "clones the orphan " + p.name(h), "exits", "reaped by " + cr}
				if !slices.Equal(did, want) {
					t.Errorf("leaver's part:\n%s\nwant\n%s\nplan:\n%s", strings.Join(did, "\n"), strings.Join(want, "\n"), p)
				}
			})
		}
	}
}

// hostPark is where the planner parks the host cursor: the largest
// level-0 pid of the image.
func hostPark(p *Plan) int {
	m := 0
	for i := range p.Procs {
		m = max(m, p.Procs[i].PIDs[0])
	}
	return m
}

// allOptions are the option sets the planner's tests cover: both payloads,
// both placements, with and without multi-level set_tid.
func allOptions() []Options {
	var opts []Options
	for _, pay := range []Payload{PayloadExec, PayloadStopped} {
		for _, pm := range []Placement{PlaceSetTID, PlaceLastPID} {
			for _, ml := range []bool{false, true} {
				opts = append(opts, Options{Payload: pay, Placement: pm, Features: Features{MultiLevelSetTID: ml}})
			}
		}
	}
	return opts
}

// replayErr replays a plan in a fresh model and returns the first error.
func replayErr(p *Plan) error {
	m := newModel(p.Tree, len(p.Procs))
	for i := range p.Steps {
		if err := m.apply(p, i); err != nil {
			return fmt.Errorf("step %d: %w", i, err)
		}
	}
	procOf := make([]int, len(p.Tree.Tasks))
	for i := range procOf {
		procOf[i] = i
	}
	return m.compare(p, procOf)
}

// TestModelChecksHelpers: the model refuses plans whose helpers break the
// rules before anything runs: a helper on an image task's pid, a helper
// whose level-0 pid the kernel would choose from a cursor nobody parked
// above the image's pids, a helper still there at the end.
func TestModelChecksHelpers(t *testing.T) {
	opt := Options{Features: Features{MultiLevelSetTID: true}}
	leaver := func(p *Plan) int {
		for i := range p.Procs {
			if p.Procs[i].Why == whyLeaver {
				return i
			}
		}
		t.Fatalf("no leaver:\n%s", p)
		return -1
	}
	cases := []struct {
		name, want string
		spoil      func(p *Plan)
	}{
		{"on an image pid", "takes pid 3 at level 2", func(p *Plan) {
			p.Procs[leaver(p)].PIDs = []int{0, 4, 3}
		}},
		{"cursor not parked", "from a cursor nobody set", func(p *Plan) {
			h := leaver(p)
			for i, s := range p.Steps {
				if s.Op == OpClone && s.Target == h {
					p.Steps = slices.Delete(p.Steps, i-1, i)
					return
				}
			}
		}},
		{"not reaped", "is still there at the end", func(p *Plan) {
			p.Steps = slices.DeleteFunc(p.Steps, func(s Step) bool {
				return (s.Op == OpExit && p.Procs[s.Actor].Why == "dead group leader") ||
					(s.Op == OpWait && p.Procs[s.Target].Why == "dead group leader")
			})
		}},
	}
	for _, c := range cases {
		p := mustPlan(t, splitGroupDeepTree(), opt)
		c.spoil(p)
		if err := replayErr(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: replay says %v, want %q", c.name, err, c.want)
		}
	}
}

func TestRestoreOrphanSession(t *testing.T)  { scenario(t, orphanSessionTree) }
func TestRestoreSplitGroup(t *testing.T)     { scenario(t, splitGroupTree) }
func TestRestoreSplitGroupDeep(t *testing.T) { scenario(t, splitGroupDeepTree) }

// TestPlanLeaverRegressions: random histories (gen_test.go) that were
// refused before leaver helpers, each for another reason: an orphan of a
// level-1 init in a session and dead group of that level, whose session
// leader was taken to be able to visit that group (seed 236) or which a
// dead session leader's helper was to clone (1139); a dead session leader
// whose helper was to be created by the very task it had to clone (2672).
func TestPlanLeaverRegressions(t *testing.T) {
	for _, seed := range []uint64{236, 1139, 2672} {
		opt := Options{Payload: Payload(seed % 2), Placement: Placement(seed / 2 % 2), Features: Features{MultiLevelSetTID: seed%8 >= 4}}
		mustPlan(t, genTree(seed, 5+int(seed%60), true), opt)
	}
}

// leftGroupTree: L formed group g, cloned M in it and went back to R's
// group; an orphan O of I, the init of pid ns 3 (below A's ns 2), is in g,
// which nobody below level 0 can name, and I's parent A cannot move I
// there either. g's leader does not end in g, so the leaver's creator is
// M, which does.
func leftGroupTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1).ns(3, 2, 2)
	const base = 23600
	b.task(1, []int{base}, 0, []int{base}, []int{base})                                // R
	b.task(1, []int{base + 1}, base, []int{base}, []int{base})                         // L, back in R's group
	b.task(1, []int{base + 2}, base+1, []int{base}, []int{base + 1})                   // M, in L's group
	b.task(2, []int{base + 3, 1}, base, []int{base, 0}, []int{base, 0})                // A
	b.task(3, []int{base + 4, 2, 1}, base+3, []int{base, 0, 0}, []int{base, 0, 0})     // I
	b.task(3, []int{base + 6, 4, 3}, base+4, []int{base, 0, 0}, []int{base + 1, 0, 0}) // O
	return sleepers(&b.tr)
}

func TestPlanLeaverByAMemberOfTheGroup(t *testing.T) {
	for _, opt := range allOptions() {
		p := mustPlan(t, leftGroupTree(), opt)
		var by []string
		for _, s := range p.Steps {
			if s.Op == OpClone && p.Procs[s.Target].Why == whyLeaver {
				by = append(by, p.name(s.Actor))
			}
		}
		if !slices.Equal(by, []string{"task 23602"}) {
			t.Errorf("%+v: leavers cloned by %v, want one by task 23602 (M)\n%s", opt, by, p)
		}
	}
}

func TestRestoreLeaverByAMemberOfTheGroup(t *testing.T) { scenario(t, leftGroupTree) }

// lateInitTree: P, born in R's session, forks Q there; Q clones I, the init
// of pid ns 2; P then enters ns 2, forks T (in R's session) and calls
// setsid. P cannot clone T before I exists, and once I exists P has left
// R's session: a stand-in born of P in R's session clones T for it, with
// CLONE_PARENT (random history seed 688 of TestPlanRandomTrees).
func lateInitTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	const base = 23650
	b.task(1, []int{base}, 0, []int{base}, []int{base})                   // R
	b.task(1, []int{base + 1}, base, []int{base + 1}, []int{base + 1})    // P
	b.task(1, []int{base + 2}, base+1, []int{base}, []int{base})          // Q
	b.task(2, []int{base + 3, 1}, base+2, []int{base, 0}, []int{base, 0}) // I
	b.task(2, []int{base + 4, 2}, base+1, []int{base, 0}, []int{base, 0}) // T
	return sleepers(&b.tr)
}

func TestPlanStandIn(t *testing.T) {
	for _, opt := range allOptions() {
		p := mustPlan(t, lateInitTree(), opt)
		var got []string
		for _, s := range p.Steps {
			if s.Op == OpClone && (p.Procs[s.Target].Why == whyStandIn || s.Target == 4) {
				got = append(got, p.name(s.Actor)+": "+p.describe(&s))
			}
		}
		h := len(p.Procs) - 1
		for i := range p.Procs {
			if p.Procs[i].Why == whyStandIn {
				h = i
			}
		}
		want := []string{
			"task 23651: clone " + p.name(h) + "  # " + whyStandIn,
			p.name(h) + ": clone task 23654/2 CLONE_PARENT setns(pidns 2) set_tid",
		}
		if opt.Placement == PlaceLastPID {
			for i := range want {
				want[i] = strings.Replace(want[i], " set_tid", "", 1)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%+v: clones\n%s\nwant\n%s\nplan:\n%s", opt, strings.Join(got, "\n"), strings.Join(want, "\n"), p)
		}
	}
}

func TestRestoreStandIn(t *testing.T) { scenario(t, lateInitTree) }

// laterMoveTree: M, born through setns into pid ns 2, forks K there while
// both are in R's group; then M's parent P forms its group and moves M
// into it (setpgid(M, P) by P: M cannot name P's group from ns 2, F4.1).
// M cannot be born in P's group, and nobody can put K in R's group but M.
func laterMoveTree() *pstree.Tree {
	b := newTB().ns(2, 1, 1)
	const base = 23700
	b.task(1, []int{base}, 0, []int{base}, []int{base})                       // R
	b.task(1, []int{base + 1}, base, []int{base}, []int{base + 1})            // P
	b.task(2, []int{base + 4, 1}, base, []int{base, 0}, []int{base, 0})       // J, the init
	b.task(2, []int{base + 2, 2}, base+1, []int{base, 0}, []int{base + 1, 0}) // M
	b.task(2, []int{base + 3, 3}, base+2, []int{base, 0}, []int{base, 0})     // K
	return sleepers(&b.tr)
}

func TestPlanOuterParentMovesLater(t *testing.T) {
	for _, opt := range allOptions() {
		p := mustPlan(t, laterMoveTree(), opt)
		var moves []string
		for _, s := range p.Steps {
			if s.Op == OpSetpgid && s.Arg != 0 {
				moves = append(moves, p.name(s.Actor)+": "+p.describe(&s))
			}
		}
		// (P may first move M into R's group, if it formed its own before.)
		if want := "task 23701: setpgid(23702, 23701)"; len(moves) == 0 || moves[len(moves)-1] != want {
			t.Errorf("%+v: moves %v, want the last to be %s\n%s", opt, moves, want, p)
		}
	}
}

func TestRestoreOuterParentMovesLater(t *testing.T) { scenario(t, laterMoveTree) }

// userStandInTree: R (host user ns 60) forks A, which unshares user ns 61;
// A clones I with CLONE_PARENT|CLONE_NEWUSER|CLONE_NEWPID: I is R's child,
// PID 1 of pid ns 2, owned by user ns 62, a child of 61 (histories seed 1).
// R cannot make 62 (its parent is 61, R is not in it), and I comes first
// in R's order, before A made 61. With owned61, 62 is folded into 61 and I
// comes after A: the owner exists, A clones I with CLONE_PARENT|CLONE_NEWPID.
func userStandInTree(owned61 bool) *pstree.Tree {
	b := userNS61()
	iUser, iUID := pstree.NSID(62), uint32(101000)
	if owned61 {
		iUser, iUID = 61, 100000
	} else {
		u2 := b.addNS(62, pstree.UserNS, false)
		u2.Parent = 61
		u2.UIDMap = []pstree.IDMapEntry{{Inside: 0, Outside: 101000, Count: 1000}}
		u2.GIDMap = u2.UIDMap
	}
	b.tr.Namespace(1).Owner, b.tr.Namespace(2).Owner = 60, iUser
	in := func(ns, user pstree.NSID, uid uint32, pids []int, ppid int) {
		t := b.task(ns, pids, ppid, make([]int, len(pids)), make([]int, len(pids)))
		t.SIDs[0], t.PGIDs[0] = 22400, 22400
		t.NS[pstree.UserNS] = user
		t.Creds = pstree.Creds{UID: uid, EUID: uid, SUID: uid, FSUID: uid, GID: uid, EGID: uid, SGID: uid, FSGID: uid}
	}
	in(1, 60, 0, []int{22400}, 0) // R
	if owned61 {
		in(1, 61, 100000, []int{22401}, 22400)     // A
		in(2, iUser, iUID, []int{22402, 1}, 22400) // I
	} else {
		in(2, iUser, iUID, []int{22401, 1}, 22400) // I
		in(1, 61, 100000, []int{22402}, 22400)     // A
	}
	return &b.tr
}

// TestPlanUserStandIn: R clones a stand-in, which joins the user namespace
// I's owner is made in (or is) once A made it, and clones I from there with
// CLONE_PARENT.
func TestPlanUserStandIn(t *testing.T) {
	for _, owned61 := range []bool{false, true} {
		for _, opt := range allOptions() {
			p := mustPlan(t, userStandInTree(owned61), opt)
			var got []string
			for i := range p.Steps {
				s := &p.Steps[i]
				if (s.Op == OpClone && p.Procs[s.Target].NS == 2) || (s.Op == OpSetns && p.Procs[s.Actor].Why == whyStandIn) {
					got = append(got, p.name(s.Actor)+": "+p.describe(s))
				}
			}
			h := slices.IndexFunc(p.Procs, func(pr Proc) bool { return pr.Why == whyStandIn })
			clone := p.name(h) + ": clone task 22401/1 CLONE_NEWUSER(user 62) CLONE_NEWPID CLONE_PARENT set_tid"
			via := "task 22402"
			if owned61 {
				clone = strings.NewReplacer(" CLONE_NEWUSER(user 62)", "", "22401/1", "22402/1").Replace(clone)
				via = "task 22401"
			}
			if opt.Placement == PlaceLastPID {
				clone = strings.Replace(clone, " set_tid", "", 1)
			}
			want := []string{p.name(h) + ": setns(user 61 via " + via + ")", clone}
			if h < 0 || !slices.Equal(got, want) {
				t.Errorf("owned61=%v %+v: got\n%s\nwant\n%s\nplan:\n%s", owned61, opt, strings.Join(got, "\n"), strings.Join(want, "\n"), p)
			}
		}
	}
}

func TestRestoreUserStandIn(t *testing.T) {
	scenario(t, func() *pstree.Tree { return userStandInTree(false) })
}
func TestRestoreUserStandInOwnerMade(t *testing.T) {
	scenario(t, func() *pstree.Tree { return userStandInTree(true) })
}

// TestPlanCreatorCycle plans testdata/creator-cycle, the dump of random
// history seed 615 (`histories 615 READY`, then `nsinit dump`), whose
// orphan rules made a proc its own creator's creator: the planner refuses
// it instead of recursing until the stack overflows (claimGroup).
func TestPlanCreatorCycle(t *testing.T) {
	tr, err := imagefile.Read("testdata/creator-cycle")
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range allOptions() {
		if _, err := NewPlan(tr, opt); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "own creator's creator") {
			t.Errorf("%+v: %v, want the creator cycle refused", opt, err)
		}
	}
}
