package pstree

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLevel is the deepest pid namespace level Linux allows
// (MAX_PID_NS_LEVEL): a task has at most MaxLevel+1 pids.
const MaxLevel = 32

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid process tree")

// Validate checks the structural invariants every consumer of a Tree relies
// on, so that a decoded image can be trusted as far as its shape goes:
//
//   - namespaces: ids unique and non-zero, known kinds, parents of the same
//     kind, owners are user namespaces, parent chains acyclic, pid namespace
//     levels one below their parent's;
//   - tasks: at least one, pids positive, 1..MaxLevel+1 levels, level equal
//     to the level of the task's pid namespace, pids and tids unique in every
//     pid namespace, pgid/sid vectors as long as the pid vector, parents
//     listed before children and in an ancestor (or the same) pid namespace,
//     exit status only on zombies and a possible wait status;
//   - namespace contents on the right kind only (hostnames on uts, maps on
//     user, links and routes on net namespaces that are not ambient), with
//     valid interface names, addresses and routes, and veth pairs that point
//     at each other.
func Validate(tr *Tree) error {
	if tr == nil {
		return fmt.Errorf("%w: nil tree", ErrInvalid)
	}
	if err := validateNamespaces(tr); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := validateTasks(tr); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func validateNamespaces(tr *Tree) error {
	byID := make(map[NSID]*Namespace, len(tr.Namespaces))
	for i := range tr.Namespaces {
		ns := &tr.Namespaces[i]
		if ns.ID == 0 {
			return fmt.Errorf("namespace %d: id 0", i)
		}
		if _, dup := byID[ns.ID]; dup {
			return fmt.Errorf("namespace %d: duplicate id %d", i, ns.ID)
		}
		if ns.Kind < 0 || ns.Kind >= numNSKinds || ns.Kind == PidForChildrenNS {
			return fmt.Errorf("namespace %d: bad kind %v", ns.ID, ns.Kind)
		}
		if ns.Level < 0 || ns.Level > MaxLevel {
			return fmt.Errorf("namespace %d: level %d out of range", ns.ID, ns.Level)
		}
		if ns.Kind != PidNS && ns.Level != 0 {
			return fmt.Errorf("namespace %d: level set on a %v namespace", ns.ID, ns.Kind)
		}
		if ns.LastPID < 0 {
			return fmt.Errorf("namespace %d: negative last pid", ns.ID)
		}
		if err := validateContents(ns); err != nil {
			return fmt.Errorf("%v namespace %d: %w", ns.Kind, ns.ID, err)
		}
		byID[ns.ID] = ns
	}
	if err := validatePeers(byID); err != nil {
		return err
	}
	for _, ns := range byID {
		if ns.Parent != 0 {
			p, ok := byID[ns.Parent]
			if !ok {
				return fmt.Errorf("namespace %d: parent %d missing", ns.ID, ns.Parent)
			}
			if ns.Kind != PidNS && ns.Kind != UserNS {
				return fmt.Errorf("namespace %d: %v namespaces have no parent", ns.ID, ns.Kind)
			}
			if p.Kind != ns.Kind {
				return fmt.Errorf("namespace %d: parent %d is a %v namespace", ns.ID, p.ID, p.Kind)
			}
			if ns.Kind == PidNS && p.Level != ns.Level-1 {
				return fmt.Errorf("pid namespace %d at level %d: parent %d at level %d", ns.ID, ns.Level, p.ID, p.Level)
			}
		} else if ns.Kind == PidNS && ns.Level != 0 {
			// The dump sees every pid namespace from level 0 down.
			return fmt.Errorf("pid namespace %d at level %d has no parent", ns.ID, ns.Level)
		}
		if ns.Owner != 0 {
			o, ok := byID[ns.Owner]
			if !ok {
				return fmt.Errorf("namespace %d: owner %d missing", ns.ID, ns.Owner)
			}
			if o.Kind != UserNS {
				return fmt.Errorf("namespace %d: owner %d is a %v namespace", ns.ID, o.ID, o.Kind)
			}
			if o.ID == ns.ID {
				return fmt.Errorf("namespace %d owns itself", ns.ID)
			}
		}
		// Parent chains end: at most len(byID) steps.
		steps := 0
		for p := ns.Parent; p != 0; p = byID[p].Parent {
			if steps++; steps > len(byID) {
				return fmt.Errorf("namespace %d: parent chain has a cycle", ns.ID)
			}
		}
	}
	return nil
}

// nsAtLevel walks up from pid namespace id to the ancestor at level; 0 when
// the chain is not known that far.
func nsAtLevel(tr *Tree, id NSID, level int) NSID {
	for id != 0 {
		ns := tr.Namespace(id)
		if ns == nil {
			return 0
		}
		if ns.Level == level {
			return id
		}
		if ns.Level < level {
			return 0
		}
		id = ns.Parent
	}
	return 0
}

type levelPID struct {
	ns  NSID
	pid int
}

func validateTasks(tr *Tree) error {
	if len(tr.Tasks) == 0 {
		return errors.New("no tasks")
	}
	// Every pid or tid in use, keyed by the pid namespace of its level.
	used := make(map[levelPID]int)
	claim := func(who string, ids []int, pidns NSID) error {
		for l, id := range ids {
			if id <= 0 {
				return fmt.Errorf("%s: pid %d at level %d not positive", who, id, l)
			}
			ns := nsAtLevel(tr, pidns, l)
			if ns == 0 {
				continue
			}
			k := levelPID{ns, id}
			if prev, dup := used[k]; dup {
				return fmt.Errorf("%s: pid %d at level %d already used by task %d", who, id, l, prev)
			}
			used[k] = ids[0]
		}
		return nil
	}
	index := make(map[int]int, len(tr.Tasks)) // level-0 pid -> task index
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		if len(t.PIDs) == 0 || len(t.PIDs) > MaxLevel+1 {
			return fmt.Errorf("task %d: %d pid levels", i, len(t.PIDs))
		}
		who := fmt.Sprintf("task %d (pid %d)", i, t.PIDs[0])
		if _, dup := index[t.PIDs[0]]; dup {
			return fmt.Errorf("%s: duplicate pid", who)
		}
		if err := validateNSSet(tr, who, t); err != nil {
			return err
		}
		pidns := t.NS[PidNS]
		if err := claim(who, t.PIDs, pidns); err != nil {
			return err
		}
		if len(t.PGIDs) != len(t.PIDs) || len(t.SIDs) != len(t.PIDs) {
			return fmt.Errorf("%s: %d pids but %d pgids and %d sids", who, len(t.PIDs), len(t.PGIDs), len(t.SIDs))
		}
		for l := range t.PIDs {
			if t.PGIDs[l] < 0 || t.SIDs[l] < 0 {
				return fmt.Errorf("%s: negative pgid or sid at level %d", who, l)
			}
		}
		if err := validateState(who, t.State, t.ExitStatus); err != nil {
			return err
		}
		if err := validateComm(who, t.Comm); err != nil {
			return err
		}
		for j, th := range t.Threads {
			tw := fmt.Sprintf("%s thread %d", who, j)
			if err := validateComm(tw, th.Comm); err != nil {
				return err
			}
			if len(th.TIDs) != len(t.PIDs) {
				return fmt.Errorf("%s: %d tid levels, task has %d", tw, len(th.TIDs), len(t.PIDs))
			}
			if th.State < Live || th.State > Zombie {
				return fmt.Errorf("%s: bad state %d", tw, th.State)
			}
			if _, dup := index[th.TIDs[0]]; dup {
				return fmt.Errorf("%s: tid %d is a task's pid", tw, th.TIDs[0])
			}
			if err := claim(tw, th.TIDs, pidns); err != nil {
				return err
			}
		}
		if i == 0 {
			if t.PPID != 0 {
				return fmt.Errorf("%s: the root's ppid must be 0, got %d", who, t.PPID)
			}
		} else {
			pi, ok := index[t.PPID]
			if !ok {
				return fmt.Errorf("%s: parent %d is not listed before it", who, t.PPID)
			}
			p := &tr.Tasks[pi]
			if t.Level() < p.Level() {
				return fmt.Errorf("%s: at level %d, above its parent %d at level %d", who, t.Level(), p.PIDs[0], p.Level())
			}
			if a := nsAtLevel(tr, pidns, p.Level()); a != 0 && a != p.NS[PidNS] {
				return fmt.Errorf("%s: pid namespace is not below its parent's", who)
			}
		}
		index[t.PIDs[0]] = i
	}
	return nil
}

func validateNSSet(tr *Tree, who string, t *Task) error {
	for k, id := range t.NS {
		if id == 0 {
			continue
		}
		ns := tr.Namespace(id)
		if ns == nil {
			return fmt.Errorf("%s: %v namespace %d missing", who, NSKind(k), id)
		}
		want := NSKind(k)
		if want == PidForChildrenNS {
			want = PidNS
		}
		if ns.Kind != want {
			return fmt.Errorf("%s: %v namespace %d is a %v namespace", who, NSKind(k), id, ns.Kind)
		}
	}
	pidns := tr.Namespace(t.NS[PidNS])
	if pidns == nil {
		return fmt.Errorf("%s: no pid namespace", who)
	}
	if pidns.Level != t.Level() {
		return fmt.Errorf("%s: %d pid levels but its pid namespace %d is at level %d", who, len(t.PIDs), pidns.ID, pidns.Level)
	}
	if pfc := tr.Namespace(t.NS[PidForChildrenNS]); pfc != nil && pfc.Level < pidns.Level {
		return fmt.Errorf("%s: pid_for_children namespace %d above its pid namespace", who, pfc.ID)
	}
	return nil
}

// validateState accepts a raw wait status only on zombies: an exit code
// (0..255) << 8, or a terminating signal 1..64, optionally | 0x80 (core).
func validateState(who string, s TaskState, status int) error {
	switch s {
	case Live, Stopped:
		if status != 0 {
			return fmt.Errorf("%s: exit status %#x on a %v task", who, status, s)
		}
		return nil
	case Zombie:
		sig := status & 0x7f
		switch {
		case status < 0 || status > 0xffff:
		case sig == 0 && status&0x80 == 0:
			return nil // exited: code in bits 8..15
		case sig >= 1 && sig <= 64 && status>>8 == 0:
			return nil // killed by sig, maybe with core
		}
		return fmt.Errorf("%s: impossible exit status %#x", who, status)
	}
	return fmt.Errorf("%s: bad state %d", who, int(s))
}

// validateComm refuses a command name the kernel could not have shown:
// longer than TASK_COMM_LEN-1 bytes, or with a NUL.
func validateComm(who, comm string) error {
	if len(comm) > 15 || strings.IndexByte(comm, 0) >= 0 {
		return fmt.Errorf("%s: command name %q: more than 15 bytes or a NUL", who, comm)
	}
	return nil
}
