package restorer

import (
	"fmt"
	"slices"

	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// finish appends the verification and the final actions, one phase
// after another: net configuration, pid_for_children, ns_last_pid
// cursors, the last user namespace moves, helpers exiting (and being
// reaped by their parents), zombies dying, payloads, and stops.
func (pl *planner) finish() error {
	pl.plan.Verify = len(pl.plan.Steps)
	if err := pl.emit(Step{Op: OpVerify, Actor: Restorer, Target: -1}); err != nil {
		return err
	}
	for _, phase := range []func() error{
		pl.netConfig, pl.pidForChildren, pl.finishCursors, pl.finishUsers,
		pl.finishHelpers, pl.finishZombies, pl.finishPayloads, pl.finishStops,
	} {
		if err := phase(); err != nil {
			return err
		}
	}
	return nil
}

// finishCursors writes each live pid namespace's final ns_last_pid (an
// agent's: above its threads' window, which it moves back itself).
func (pl *planner) finishCursors() error {
	tr := pl.tr()
	for _, ns := range tr.Namespaces {
		if ns.Kind != pstree.PidNS || ns.Level == 0 || ns.LastPID <= 0 {
			continue
		}
		init := pl.m.nss[ns.ID].init
		if init < 0 || tr.Tasks[init].State == pstree.Zombie {
			continue // a dead namespace has no cursor to restore
		}
		v := ns.LastPID
		if pl.plan.becomesAgent(init) { // the agent restores the cursor itself
			// The agent's Go runtime threads must not sit on the pids
			// right above LastPID: they start in a high window, and the
			// agent writes LastPID itself once running.
			v = pl.plan.agentWindow()
			for _, t := range tr.Tasks {
				if t.NS[pstree.PidNS] == ns.ID && t.InnerPID() >= v {
					return fmt.Errorf("pid ns %d: pid %d is in the agent's thread window above %d: %w", ns.ID, t.InnerPID(), v, ErrUnsupported)
				}
			}
		}
		w := pl.capableMember(ns.ID)
		if w < 0 && pl.m.nss[ns.ID].last == v {
			// Nobody there may write it (its init went down to a user
			// namespace without capability over the owner, as in the
			// original), and the clones left it right.
			continue
		}
		if w < 0 {
			w = init // the model refuses it, naming the owner
		}
		if err := pl.emit(Step{Op: OpLastPID, Actor: w, Target: -1, Arg: v}); err != nil {
			return err
		}
	}
	return nil
}

// finishHelpers ends the helpers, in reverse order of creation.
func (pl *planner) finishHelpers() error {
	// Helpers exit in reverse order of creation; their parent (not
	// always their creator: CLONE_PARENT) reaps them.
	var helpers []int
	for _, s := range pl.plan.Steps {
		if s.Op == OpClone && pl.plan.Procs[s.Target].IsHelper() {
			helpers = append(helpers, s.Target)
		}
	}
	slices.Reverse(helpers)
	for _, h := range helpers {
		if err := pl.emit(Step{Op: OpExit, Actor: h, Target: -1}); err != nil {
			return err
		}
		if err := pl.emit(Step{Op: OpWait, Actor: pl.m.procs[h].parent, Target: h}); err != nil {
			return err
		}
	}
	return nil
}

// finishZombies makes the zombies die, with their exit status.
func (pl *planner) finishZombies() error {
	tr := pl.tr()
	// Zombies die deepest namespace first, so a zombie init is alone in its
	// namespace when it dies.
	var zombies []int
	for i := range tr.Tasks {
		if tr.Tasks[i].State == pstree.Zombie {
			zombies = append(zombies, i)
		}
	}
	slices.SortStableFunc(zombies, func(a, b int) int { return pl.level(b) - pl.level(a) })
	for _, i := range zombies {
		t := &tr.Tasks[i]
		if t.ExitStatus&0x80 != 0 {
			return fmt.Errorf("task %d: exit status %#x has the core-dump bit, which needs a real core dump: %w", t.PID(), t.ExitStatus, ErrUnsupported)
		}
		if t.InnerPID() == 1 && t.Level() > 0 && t.ExitStatus&0x7f != 0 {
			// An init ignores its own signals; only SIGKILL from an
			// ancestor namespace reproduces "killed by a signal".
			if t.ExitStatus&0x7f != int(unix.SIGKILL) {
				return fmt.Errorf("task %d: a pid ns init killed by signal %d cannot be reproduced: %w", t.PID(), t.ExitStatus&0x7f, ErrUnsupported)
			}
			if err := pl.emit(Step{Op: OpKill, Actor: Restorer, Target: i, Arg: int(unix.SIGKILL)}); err != nil {
				return err
			}
			continue
		}
		if err := pl.emit(Step{Op: OpExit, Actor: i, Target: -1, Arg: t.ExitStatus}); err != nil {
			return err
		}
	}
	return nil
}

// finishPayloads starts every live task's payload, with its image ids.
func (pl *planner) finishPayloads() error {
	tr := pl.tr()
	switched := switchedIDs(pl.plan) // every clone is planned by now
	for i := range tr.Tasks {
		if tr.Tasks[i].State != pstree.Zombie {
			// Both payloads take the image's ids (a stopped one before
			// it parks): unmapped groups are refused here, unmapped ids
			// are kept from the builder: the restorer's (checked when
			// the restore starts) or, when it switched them, those.
			uid, gid, _, _, err := taskCreds(pl.plan, i)
			if err != nil {
				return err
			}
			if b := switched[i]; b.switched && (slices.Contains(uid[:], keepID) || slices.Contains(gid[:], keepID)) {
				// Its builder (or the one that cloned it) switched ids
				// to make a user namespace: what it keeps is those.
				if err := keptIDs(pl.plan, i, [3]uint32{b.uid, b.uid, b.uid}, [3]uint32{b.gid, b.gid, b.gid}); err != nil {
					return fmt.Errorf("%w (its builder switched ids to make a user namespace)", err)
				}
			}
			if err := pl.emit(Step{Op: OpPayload, Actor: i, Target: -1}); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishStops stops what was stopped (and, with the stopped payload,
// every live task).
func (pl *planner) finishStops() error {
	tr := pl.tr()
	for i := range tr.Tasks {
		if st := tr.Tasks[i].State; st == pstree.Stopped || (st == pstree.Live && pl.plan.Options.Payload == PayloadStopped) {
			if err := pl.emit(Step{Op: OpKill, Actor: Restorer, Target: i, Arg: int(unix.SIGSTOP)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// pidForChildren gives every live task whose pid_for_children is not its
// own pid namespace that namespace again, after every clone (the setns back
// after a setns-born clone would undo it) and before any zombie dies (the
// setns goes through a live process in the namespace): setns(CLONE_NEWPID)
// through a proc in it, the namespace's init if it has one, or
// unshare(CLONE_NEWPID) when nobody is in it (`unshare -p` with no child
// yet).
func (pl *planner) pidForChildren() error {
	tr := pl.tr()
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		want := t.NS[pstree.PidForChildrenNS]
		if t.State == pstree.Zombie || want == 0 || want == t.NS[pstree.PidNS] || pl.m.procs[i].pfc == want || pl.lostOwner(i) != 0 {
			continue // lostOwner: finishUsers, after its move
		}
		s := pl.pfcStep(i, want)
		if err := pl.emit(s); err != nil {
			return err
		}
	}
	return nil
}

// pfcStep is task i's setns(CLONE_NEWPID) into pid namespace want through
// a live proc in it (its init if it has one), or its
// unshare(CLONE_NEWPID) when nobody is in it.
func (pl *planner) pfcStep(i int, want pstree.NSID) Step {
	via := -1
	for p := range pl.plan.Procs {
		if pl.plan.Procs[p].NS == want && pl.m.procs[p].state == mAlive && (via < 0 || pl.isInitOf(p, want)) {
			via = p
		}
	}
	s := Step{Op: OpSetPFC, Actor: i, Target: via, Into: want}
	if via < 0 {
		s.NewPIDNS, s.Target = true, -1
	}
	return s
}
