package restorer

import (
	"fmt"

	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
)

// Kernel-chosen host pids (Options.HostPIDsAny, `restore --host-pids
// any`; docs/restore.md "Kernel-chosen host pids").
//
// Level 0 is the only level shared with the rest of the machine. With
// HostPIDsAny the plan is made against the image as always - procs,
// sessions and groups named by their image numbers at every level - but
// level 0 is the kernel's: no clone sets it through set_tid (a set_tid one
// entry shorter than the task's depth leaves it to the kernel, kernel.md
// F2.1), no cursor is written or parked there, and the model takes the
// image's level-0 numbers as names for whatever the kernel gives, never
// as pids to check against a cursor. Every deeper level is placed and
// verified exactly as before.
//
// Execute then learns each proc's level-0 pid from its pidfd: a level-0
// builder that names a proc by its level-0 number (setpgid of its child,
// or into a group) reads it from that proc's pidfd when its step runs
// (builder_linux.go, setpgidStep); the verification records every proc's
// (tx.pid0), and everything after it - waits, /proc reads, the result -
// uses those.

// firstPlaced is the outermost level the plan places (set_tid or a
// cursor): 1 when the kernel chooses level 0.
func (pl *planner) firstPlaced() int {
	if pl.plan.Options.HostPIDsAny {
		return 1
	}
	return 0
}

// kernelHostPIDs marks the model's level-0 pid namespace as the kernel's
// (on): its numbers are names, not placements.
func (m *model) kernelHostPIDs(on bool) *model {
	for _, n := range m.nss {
		if n.level == 0 {
			n.kernel = on
		}
	}
	return m
}

// checkHostPIDsAny refuses, with HostPIDsAny, what names a level-0 pid in
// a way Execute cannot map yet: a user namespace's maps are written
// through /proc/PID of its first member, a path laid out before the
// kernel gives the pid; threads (stopped payload) are verified through
// /proc/PID/task/TID, and a thread of a host-level task has no other
// number to tell it by.
func checkHostPIDsAny(tr *pstree.Tree, opt Options) error {
	if !opt.HostPIDsAny {
		return nil
	}
	for i := range tr.Namespaces {
		if ns := &tr.Namespaces[i]; ns.Kind == pstree.UserNS && !ns.Ambient {
			return fmt.Errorf("user namespace %d with --host-pids any: its maps are written through the level-0 pid of its first member, not mapped yet: %w", ns.ID, ErrUnsupported)
		}
	}
	if opt.Payload == PayloadStopped {
		for i := range tr.Tasks {
			if len(tr.Tasks[i].Threads) > 0 {
				return fmt.Errorf("task %d (pid %d) has threads: with --host-pids any and the stopped payload they are not verified yet: %w", i, tr.Tasks[i].PID(), ErrUnsupported)
			}
		}
	}
	return nil
}

// layoutHostPIDs sets, with HostPIDsAny, which procs a level-0 actor's
// setpgid names (argProc, arg2Proc): the builder reads their level-0
// pids from their pidfds when the step runs. Numbers that name no proc
// (a group led from outside the tree) are used as they are.
func layoutHostPIDs(p *Plan, b *block) {
	at0 := map[int]int{}
	for i := range p.Procs {
		if pr := &p.Procs[i]; pr.PIDs[0] != 0 {
			at0[pr.PIDs[0]] = i
		}
	}
	for i := range p.Steps {
		s := &p.Steps[i]
		r := stepAt(b.base, b.stepsOff, int64(i))
		r.argProc, r.arg2Proc = -1, -1
		if !p.Options.HostPIDsAny || s.Op != OpSetpgid || s.Actor < 0 || len(p.Procs[s.Actor].PIDs) != 1 {
			continue
		}
		if q, ok := at0[s.Arg]; ok && s.Arg != 0 {
			r.argProc = int64(q)
		}
		if q, ok := at0[s.Arg2]; ok && s.Arg2 != 0 {
			r.arg2Proc = int64(q)
		}
	}
}

// recordHostPID keeps proc i's level-0 pid, read by the verification.
func (t *tx) recordHostPID(i int, got []int) {
	if t.pid0 == nil {
		t.pid0 = make([]int, len(t.p.Procs))
	}
	t.pid0[i] = got[0]
}

// hostPID is proc i's level-0 pid: the kernel's (recorded by the
// verification) with HostPIDsAny, else the plan's.
func (t *tx) hostPID(i int) int {
	if t.pid0 != nil && t.pid0[i] != 0 {
		return t.pid0[i]
	}
	return t.p.Procs[i].PIDs[0]
}

// hostPIDs maps, with HostPIDsAny (nil otherwise), every level-0 number
// of the image that a proc played to the pid it got: each task's, and
// each dead session or group leader's, whose helper's pid the session or
// group keeps after it exited (F4.2).
func (t *tx) hostPIDs() map[int]int {
	if !t.p.Options.HostPIDsAny {
		return nil
	}
	out := map[int]int{}
	for i := range t.p.Procs {
		if n := t.p.Procs[i].PIDs[0]; n != 0 {
			out[n] = t.hostPID(i)
		}
	}
	return out
}

// placedAt reads proc i's placement for the verification (F9.1) and
// records its level-0 pid.
func (t *tx) placedAt(i int) ([]int, error) {
	got, err := sys.FdinfoNSpid(int(t.proc(i).pidfd))
	if err == nil && len(got) > 0 {
		t.recordHostPID(i, got)
	}
	return got, err
}
