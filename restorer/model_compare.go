package restorer

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
)

// compare checks the model's final state against the image: pids, parent,
// pgid and sid at every level, state, exit status and (when restored)
// threads. Sessions and groups led from outside the tree are not compared:
// the restored root inherits the restorer's.
func (m *model) compare(pl *Plan, procOf []int) error {
	tr := pl.Tree
	for ti := range tr.Tasks {
		t := &tr.Tasks[ti]
		pi := procOf[ti]
		p := &m.procs[pi]
		name := pl.name(pi)
		if p.state == mNone || p.state == mReaped {
			return fmt.Errorf("%s: not present", name)
		}
		if !slices.Equal(p.pids, t.PIDs) {
			return fmt.Errorf("%s: pids %v, want %v", name, p.pids, t.PIDs)
		}
		ppid := 0
		if p.parent >= 0 {
			ppid = m.procs[p.parent].pids[0]
		}
		if ppid != t.PPID {
			return fmt.Errorf("%s: parent %d, want %d", name, ppid, t.PPID)
		}
		// Which of the parent's threads: threads exist only with the
		// stopped payload (the exec payload records but cannot honour
		// it: exec ends every other thread).
		if pl.Options.Payload == PayloadStopped && t.ParentTID != 0 && ti > 0 {
			want := t.ParentTID
			if want == t.PPID {
				want = 0
			}
			if p.parentTID != want && !parentIsAgent(tr, t) {
				return fmt.Errorf("%s: child of thread %d of its parent, want %d", name, cmp.Or(p.parentTID, ppid), t.ParentTID)
			}
		}
		c := m.chain(p.ns)
		for l := range t.PIDs {
			if p.sid != ext {
				if got := m.num(p.sid, c, l); got != t.SIDs[l] {
					return fmt.Errorf("%s: sid %d at level %d, want %d", name, got, l, t.SIDs[l])
				}
			}
			if p.pgid != ext {
				if got := m.num(p.pgid, c, l); got != t.PGIDs[l] {
					return fmt.Errorf("%s: pgid %d at level %d, want %d", name, got, l, t.PGIDs[l])
				}
			}
		}
		switch {
		case t.State == pstree.Zombie:
			if p.state != mZombie || p.status != t.ExitStatus {
				return fmt.Errorf("%s: state %v status %d, want zombie status %d", name, p.state, p.status, t.ExitStatus)
			}
		case p.state != mAlive || !p.payload:
			return fmt.Errorf("%s: not running its payload", name)
		case (t.State == pstree.Stopped || pl.Options.Payload == PayloadStopped) != p.stopped:
			return fmt.Errorf("%s: stopped=%v, want %v", name, p.stopped, !p.stopped)
		}
		if t.State != pstree.Zombie {
			if err := m.compareNS(name, t, p); err != nil {
				return err
			}
		}
		if want := t.NS[pstree.PidForChildrenNS]; t.State != pstree.Zombie && want != 0 {
			got := p.ns
			if p.pfc != 0 {
				got = p.pfc
			}
			if got != want {
				return fmt.Errorf("%s: pid_for_children ns %d, want %d", name, got, want)
			}
		}
		if t.State != pstree.Zombie && pl.Options.Payload == PayloadStopped && !t.Agent {
			if len(p.threads) != len(t.Threads) {
				return fmt.Errorf("%s: %d threads, want %d", name, len(p.threads), len(t.Threads))
			}
			for i := range t.Threads {
				if !slices.Equal(p.threads[i], t.Threads[i].TIDs) {
					return fmt.Errorf("%s: thread %v, want %v", name, p.threads[i], t.Threads[i].TIDs)
				}
			}
		}
	}
	// Helpers exist only during the restore: each one has exited and its
	// parent reaped it (its children went where the image has them).
	for i := range pl.Procs {
		if pl.Procs[i].IsHelper() && m.procs[i].state != mReaped {
			return fmt.Errorf("%s (%s) is still there at the end", pl.name(i), pl.Procs[i].Why)
		}
	}
	for id, n := range m.nss {
		ns := tr.Namespace(id)
		if ns.Level > 0 && ns.LastPID > 0 && !n.dead && n.last != ns.LastPID && n.last != pl.agentWindow() {
			return fmt.Errorf("pid ns %d: ns_last_pid %d, want %d", id, n.last, ns.LastPID)
		}
	}
	return nil
}

// parentIsAgent says whether t's parent is an nsinit agent, whose threads
// are its Go runtime's: not restored, so not which of them forked t.
func parentIsAgent(tr *pstree.Tree, t *pstree.Task) bool {
	p := tr.Task(t.PPID)
	return p != nil && p.Agent
}

// compareNS checks a live task's namespaces of the member kinds.
func (m *model) compareNS(name string, t *pstree.Task, p *mproc) error {
	for _, k := range memberKinds {
		if want := t.NS[k]; want != 0 && p.nsk[k] != want {
			return fmt.Errorf("%s: %v namespace %d, want %d", name, k, p.nsk[k], want)
		}
	}
	return nil
}
