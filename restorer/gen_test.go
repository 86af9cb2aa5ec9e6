package restorer

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// genTree plays a random history with the kernel's rules (fork, CLONE_NEWPID,
// setns-born children, setsid, setpgid, exits with reparenting to the ns
// init, reaping, threads) and returns the resulting tree as a dump would
// record it. It shares no code with the planner or its model, so plans are
// checked against an independent reading of the rules.
var genDebug = false

// With orphans false, only childless tasks exit and nothing is reaped: no
// reparenting, no dead leaders.
func genTree(seed uint64, steps int, orphans bool) *pstree.Tree {
	return genTreeWith(seed, steps, orphans, false)
}

// genTreeWith is genTree, with subreapers: before each step a task may
// become a child subreaper (drawn from a second random stream, so the
// rest of the history is genTree's), and an exit hands the children to
// the nearest live subreaper above the dying task in its namespace before
// the init (F5.2).
func genTreeWith(seed uint64, steps int, orphans, subreapers bool) *pstree.Tree {
	reap := orphans
	r := rand.New(rand.NewPCG(seed, 7))
	rs := rand.New(rand.NewPCG(seed, 11))
	type gns struct {
		parent, level, next, init int
	}
	type gtask struct {
		pids           []int
		ns, parent     int
		sid, pgid      int
		zombie, reaped bool
		status         int
		stopped        bool
		threads        [][]int
		subreaper      bool
	}
	nss := []*gns{{parent: -1, level: 0, next: 20000 + r.IntN(5000), init: -1}}
	var ts []*gtask
	chain := func(ns int) []int {
		var c []int
		for ; ns >= 0; ns = nss[ns].parent {
			c = append([]int{ns}, c...)
		}
		return c
	}
	alloc := func(ns int, newNS bool) []int {
		c := chain(ns)
		pids := make([]int, len(c))
		for l, n := range c {
			nss[n].next++
			pids[l] = nss[n].next
		}
		if newNS {
			pids[len(pids)-1] = 1
			nss[ns].next = 1
		}
		return pids
	}
	live := func(t *gtask) bool { return !t.zombie && !t.reaped }
	isDesc := func(ns, anc int) bool {
		for ; ns >= 0; ns = nss[ns].parent {
			if ns == anc {
				return true
			}
		}
		return false
	}
	// the root: a session leader at level 0, or an init at level 1
	if r.IntN(2) == 0 {
		ts = append(ts, &gtask{pids: alloc(0, false), parent: -1})
	} else {
		nss = append(nss, &gns{parent: 0, level: 1, init: 0})
		ts = append(ts, &gtask{pids: alloc(1, true), ns: 1, parent: -1})
	}
	ts[0].sid, ts[0].pgid = 0, 0
	for i := 0; i < steps; i++ {
		if subreapers && rs.IntN(8) == 0 {
			if x := ts[rs.IntN(len(ts))]; live(x) {
				x.subreaper = true
			}
		}
		ti := r.IntN(len(ts))
		t := ts[ti]
		if !live(t) {
			continue
		}
		switch a := r.IntN(10); {
		case a < 4: // fork
			ns, newNS := t.ns, false
			switch k := r.IntN(10); {
			case k < 2 && nss[t.ns].level < 3:
				nss = append(nss, &gns{parent: t.ns, level: nss[t.ns].level + 1, init: len(ts)})
				ns, newNS = len(nss)-1, true
			case k < 3:
				for n := range nss {
					if n != t.ns && isDesc(n, t.ns) && nss[n].init >= 0 && live(ts[nss[n].init]) {
						ns = n
						break
					}
				}
			}
			ts = append(ts, &gtask{pids: alloc(ns, newNS), ns: ns, parent: ti, sid: t.sid, pgid: t.pgid})
			if genDebug {
				println("fork", ti, "->", len(ts)-1, "ns", ns)
			}
		case a < 5: // setsid: EPERM while any task is in a group numbered ti
			inGroup := false
			for _, u := range ts {
				inGroup = inGroup || !u.reaped && u.pgid == ti
			}
			if !inGroup {
				t.sid, t.pgid = ti, ti
			}
		case a < 6: // new group
			if t.sid != ti {
				t.pgid = ti
			}
		case a < 7: // join a group of the session that t can name
			g := r.IntN(len(ts))
			lg := ts[g]
			c, lc := chain(t.ns), chain(lg.ns)
			l := len(c) - 1
			exists := false
			for _, u := range ts {
				if !u.reaped && u.pgid == g && u.sid == t.sid {
					exists = true
				}
			}
			if t.sid != ti && exists && l < len(lc) && lc[l] == c[l] {
				t.pgid = g
			}
		case a < 8: // exit
			if ti == 0 {
				continue
			}
			n := nss[t.ns]
			if n.init == ti {
				busy := false
				for u, x := range ts {
					if u != ti && !x.reaped && isDesc(x.ns, t.ns) {
						busy = true
					}
				}
				if busy {
					continue
				}
			}
			reaper := n.init
			for q := t.parent; q >= 0 && q != n.init && ts[q].ns == t.ns; q = ts[q].parent {
				if ts[q].subreaper && live(ts[q]) {
					reaper = q
					break
				}
			}
			if reaper < 0 || reaper == ti || !orphans {
				// level 0: orphans would leave the tree
				has := false
				for _, x := range ts {
					if x.parent == ti && !x.reaped {
						has = true
					}
				}
				if has {
					continue
				}
			}
			t.zombie = true
			t.status = r.IntN(256) << 8
			if r.IntN(3) == 0 {
				t.status = []int{9, 15}[r.IntN(2)]
				if n.init == ti {
					t.status = 9
				}
			}
			for u, x := range ts {
				if x.parent == ti && !x.reaped {
					x.parent = reaper
					if genDebug {
						println("reparent", u, "to", reaper)
					}
				}
			}
		case a < 9: // the parent reaps a zombie child
			if !reap {
				continue
			}
			for _, x := range ts {
				if x.parent == ti && x.zombie && !x.reaped && r.IntN(2) == 0 {
					x.reaped = true
				}
			}
		default:
			if r.IntN(3) == 0 {
				t.stopped = true
			} else {
				t.threads = append(t.threads, alloc(t.ns, false))
			}
		}
	}
	// Emit parents before children.
	tr := &pstree.Tree{SubreapersRecorded: subreapers}
	for n, x := range nss {
		ns := pstree.Namespace{ID: pstree.NSID(n + 1), Kind: pstree.PidNS, Level: x.level, Parent: pstree.NSID(x.parent + 1)}
		if x.level > 0 && x.init >= 0 && live(ts[x.init]) && r.IntN(2) == 0 {
			ns.LastPID = x.next
		}
		tr.Namespaces = append(tr.Namespaces, ns)
	}
	num := func(leader int, c []int, l int) int {
		lc := chain(ts[leader].ns)
		if l >= len(lc) || lc[l] != c[l] {
			return 0
		}
		return ts[leader].pids[l]
	}
	queue := []int{0}
	for len(queue) > 0 {
		ti := queue[0]
		queue = queue[1:]
		x := ts[ti]
		pt := pstree.Task{PIDs: x.pids, Exe: "/bin/true", ChildSubreaper: x.subreaper}
		if x.parent >= 0 {
			pt.PPID = ts[x.parent].pids[0]
		}
		pt.NS[pstree.PidNS] = pstree.NSID(x.ns + 1)
		c := chain(x.ns)
		for l := range x.pids {
			pt.SIDs = append(pt.SIDs, num(x.sid, c, l))
			pt.PGIDs = append(pt.PGIDs, num(x.pgid, c, l))
		}
		switch {
		case x.zombie:
			pt.State, pt.ExitStatus = pstree.Zombie, x.status
		case x.stopped:
			pt.State = pstree.Stopped
		}
		if !x.zombie {
			for _, th := range x.threads {
				pt.Threads = append(pt.Threads, pstree.Thread{TIDs: th})
			}
		}
		tr.Tasks = append(tr.Tasks, pt)
		for u, y := range ts {
			if y.parent == ti && !y.reaped {
				queue = append(queue, u)
			}
		}
	}
	return tr
}

// TestPlanRandomTrees is the property test: for random valid trees, a plan
// is either refused as unsupported (never as malformed, never a panic) or
// reproduces the tree when replayed in the model. Without orphans every
// tree is planned; with orphans and dead leaders (histories where chains
// of creators died), and with child subreapers adopting orphans besides,
// at most the share perMille allows is refused (the known gaps are in
// docs/restore.md, Limits, "Planner orders" and "Reapers"). The rest are
// refused with ErrUnsupported before anything runs.
func TestPlanRandomTrees(t *testing.T) {
	for _, c := range []struct {
		name                string
		orphans, subreapers bool
		perMille            int
	}{
		{"without orphans", false, false, 0},
		{"with orphans", true, false, 1},
		{"with orphans and subreapers", true, true, 1},
	} {
		ok, unsupported := 0, 0
		reasons := map[string]int{}
		for seed := uint64(1); seed <= 3000; seed++ {
			tr := genTreeWith(seed, 5+int(seed%60), c.orphans, c.subreapers)
			opt := Options{Payload: Payload(seed % 2), Placement: Placement(seed / 2 % 2), Features: Features{MultiLevelSetTID: seed%8 >= 4}}
			p, err := NewPlan(tr, opt)
			switch {
			case err == nil:
				replay(t, p)
				ok++
			case errors.Is(err, ErrUnsupported):
				unsupported++
				if len(reasons) < 5 {
					reasons[err.Error()]++
				}
				t.Logf("%s: seed %d: %v", c.name, seed, err)
			default:
				t.Fatalf("%s: seed %d: valid tree refused: %v", c.name, seed, err)
			}
		}
		t.Logf("%s: %d planned, %d unsupported; e.g. %v", c.name, ok, unsupported, reasons)
		if allowed := (ok + unsupported) * c.perMille / 1000; unsupported > allowed {
			t.Errorf("%s: %d of %d unsupported, more than %d", c.name, unsupported, ok+unsupported, allowed)
		}
	}
}
