// Package restorer re-creates a dumped process tree (a *pstree.Tree) with the
// same pid at every namespace level, the same parents, sessions, groups,
// threads and zombies.
//
// It works in two separate halves (docs/restore.md):
//
//   - NewPlan is a pure function from the image to a Plan: the procs to
//     create (image tasks plus short-lived helpers) and an explicit, ordered
//     []Step saying who does what. The planner replays every step in a model
//     of the kernel's rules (model.go) while it plans, so a plan that would
//     not reproduce the tree is refused before anything runs.
//   - Execute carries a plan out on the real kernel, verifies every placement
//     through pidfds and rolls everything back on any error.
//
// Files are named by phase, so a reader opens the phase they care about:
//
//   - plan.go: the Plan, its Steps and Options (what the two halves share).
//   - planner*.go: the pure planner. planner.go drives it (NewPlan, build);
//     planner_creators.go decides who clones whom, planner_groups.go which
//     group each clone happens in, planner_expand.go orders a proc's part,
//     planner_place.go emits each clone with its pids and cursor writes,
//     planner_helpers.go adds the temporary helper tasks
//     (planner_keepers.go the members that keep a user namespace),
//     planner_namespaces.go, planner_userns.go, planner_userstage.go (a
//     task's user namespace over time) and planner_net.go plan the other
//     namespaces, planner_finish.go the verification and final steps.
//   - model*.go: the kernel's rules the planner checks every step against
//     (model.go: state and apply; model_tasks.go: clone, setpgid, exit;
//     model_namespaces.go; model_compare.go: the final comparison).
//   - execute.go, exec_*.go: the transaction that runs a plan: the shared
//     block the builders read (exec_block.go), running the steps
//     (exec_tx.go), verifying placements (exec_verify.go), commit and
//     rollback (exec_commit.go), keeping the shared memory private
//     (exec_private.go), the host cursor's checks (exec_hostcursor.go),
//     agents (exec_agents.go), credentials and names (exec_creds.go,
//     exec_comm.go), network configuration (netcfg.go, rtnl.go), a
//     container's mounts on Options.Root (exec_mounts.go).
//   - builder*_linux.go and trampoline_amd64.s: the code the cloned builder
//     tasks run, with no Go runtime (raw syscalls only).
package restorer

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Sentinels callers branch on.
var (
	// ErrPIDTaken: a pid the image needs is already in use at some level.
	ErrPIDTaken = errors.New("pid already taken")
	// ErrOutsideLeader: the image's root was in a session or group led
	// from outside the tree, which the restorer is not in (Options.ShellJob).
	// It wraps ErrUnsupported.
	ErrOutsideLeader = fmt.Errorf("session or group led from outside the tree: %w", ErrUnsupported)
	// ErrUnsupported: the image describes a tree this planner cannot build.
	ErrUnsupported = errors.New("unsupported tree shape")
	// ErrBadImage: the image is malformed.
	ErrBadImage = errors.New("malformed image")
)

// Op is what one step does.
type Op int

// The operations, in the order they typically appear in a plan.
const (
	// OpClone: Actor creates proc Target with clone3 at Target's PIDs.
	OpClone Op = iota
	// OpSetsid: Actor calls setsid().
	OpSetsid
	// OpSetpgid: Actor calls setpgid(Arg, Arg2): Arg is the target (0 =
	// itself, else its child's pid in the actor's namespace) and Arg2 the
	// group (0 = the target's own pid), both as numbers of the actor's ns.
	OpSetpgid
	// OpThread: Actor creates a thread with tids PIDs (outermost first).
	OpThread
	// OpVerify: the restorer checks every placement through pidfds.
	OpVerify
	// OpLastPID: Actor writes Arg to its own namespace's ns_last_pid: right
	// before a clone (so the next pid of that level is Arg+1), or at the end
	// (the image's cursor, F1.4). The level-0 writer's write that parks the
	// host cursor after a clone placed through it has Target set: it then
	// checks that Target got its level-0 pid (the host cursor is shared
	// with every process of the machine, F1.3).
	OpLastPID
	// OpWait: Actor reaps its child Target (a helper) and checks it exited 0.
	OpWait
	// OpExit: Actor terminates with raw wait status Arg (exit code << 8, or
	// a signal number): a zombie of the image, or a helper whose job is done.
	OpExit
	// OpKill: the restorer sends signal Arg to Target (a stopped task, or a
	// zombie init that died by SIGKILL: an init cannot signal itself).
	OpKill
	// OpPayload: Actor becomes its payload: exec its recorded program, or
	// park (stopped payload; the restorer then stops it with OpKill).
	OpPayload
	// OpSetPFC: Actor sets its pid_for_children namespace to the image's
	// before its final action (a task that did `unshare -p` and then
	// exec'd, or setns(CLONE_NEWPID)): with Into != 0, setns(CLONE_NEWPID)
	// through the pidfd of proc Target, which is in namespace Into; with
	// NewPIDNS, unshare(CLONE_NEWPID) (a fresh namespace nobody is in yet).
	OpSetPFC
	// OpUnshare: Actor creates the namespaces NS names (the kinds whose
	// entry is set) with unshare(2): it is their first member.
	OpUnshare
	// OpSetns: Actor joins the namespaces NS names through the pidfd of
	// proc Target, a member of each.
	OpSetns
	// OpHostname: Actor sets the hostname and domain name of its (new) uts
	// namespace to the image's.
	OpHostname
	// OpUserMap: Actor, a member of user namespace NS[UserNS]'s parent,
	// writes its setgroups, uid_map and gid_map through Target, the
	// member that just created it.
	OpUserMap
	// OpSetCreds: Actor sets its real, effective and saved uid to Arg and
	// gids to Arg2 (ids of its user namespace), so it can create a user
	// namespace inside it (the kernel wants the creator's ids mapped).
	OpSetCreds
	// OpNetConfig: the restorer configures net namespace NS[NetNS]
	// (interfaces, addresses, routes) through member proc Target.
	OpNetConfig
	// OpSubreaper: Actor, a child subreaper of the image that adopts an
	// orphan during the restore, sets PR_SET_CHILD_SUBREAPER before the
	// proc that leaves it the orphan dies.
	OpSubreaper
)

var opNames = [...]string{"clone", "setsid", "setpgid", "thread", "verify", "lastpid", "wait", "exit", "kill", "payload", "setpfc", "unshare", "setns", "hostname", "usermap", "setcreds", "netconfig", "subreaper"}

func (o Op) String() string {
	if o < 0 || int(o) >= len(opNames) {
		return fmt.Sprintf("op(%d)", int(o))
	}
	return opNames[o]
}

// Restorer is the Actor of steps the Go restorer itself performs.
const Restorer = -1

// Step is one action of the plan, performed by proc Actor (or Restorer).
type Step struct {
	Op     Op
	Actor  int
	Target int // proc index (OpClone, OpWait, OpKill); -1 otherwise
	// OpClone: SetTID says whether the innermost pid is given through
	// set_tid (else it comes from the cursor). NewPIDNS makes Target the init of a new pid namespace;
	// Into > 0 means the actor first setns()es its pid_for_children into
	// Target's namespace (task "born via setns") and back afterwards;
	// AsSibling is CLONE_PARENT (Target becomes a child of the actor's
	// parent). OpThread: PIDs are the thread's tids.
	SetTID    bool
	SetFrom   int // with SetTID: the outermost level set_tid sets
	NewPIDNS  bool
	Into      pstree.NSID
	AsSibling bool
	// Thread (OpClone): the level-0 tid of the actor's thread that
	// clones, so that the child is that thread's (stopped payload); 0 for
	// the actor itself.
	Thread    int
	PIDs      []int
	Arg, Arg2 int
	// NS: OpUnshare and OpSetns, the namespace of each kind concerned.
	NS pstree.NSSet
}

// Payload is what restored live tasks become.
type Payload int

const (
	// PayloadExec: each live task execs its recorded Exe/Argv/Env/Cwd/creds.
	PayloadExec Payload = iota
	// PayloadStopped: each live task stays stopped at its place (threads
	// included), for inspection or a later state restorer.
	PayloadStopped
)

// Placement is how a task gets its pid at each level.
//
// With PlaceSetTID on a kernel with Features.MultiLevelSetTID (6.1 and 6.18
// both) one clone3 sets every level (docs/kernel.md F2.1). Otherwise the outer
// levels come from ns_last_pid cursors, each written by a process inside
// that level right before the clone (F1.1). Every placement is verified.
type Placement int

const (
	// PlaceSetTID: every level through set_tid (MultiLevelSetTID), else
	// the innermost level through set_tid and outer levels through cursors.
	PlaceSetTID Placement = iota
	// PlaceLastPID: every level through cursors (no CAP_CHECKPOINT_RESTORE
	// needed at the task's own level beyond writing ns_last_pid).
	PlaceLastPID
)

// Options are decided before planning (the plan never changes
// during execution).
type Options struct {
	Payload   Payload
	Placement Placement
	// AgentExe is the nsinit binary a task that was an agent (Task.Agent)
	// execs in agent mode (`nsinit agent --adopt ...`) with the exec
	// payload; "" execs its recorded program like any task.
	AgentExe string
	// Features of the kernel the plan runs on (ProbeFeatures).
	Features Features
	// Root is the directory tasks whose root was elsewhere (a
	// container's filesystem, Task.RootElsewhere) run in with the exec
	// payload: the builder chroots there before the exec, so Exe and Cwd
	// resolve in it (`criu restore --root`).
	Root string
	// SkipMissingBinds leaves out, with Root, a recorded bind mount from
	// the host whose source this machine lacks, instead of refusing the
	// image (ErrMissingBind; MissingBinds lists them for a warning).
	SkipMissingBinds bool
	// HostMounts runs such tasks in the restorer's own root instead. With
	// neither, an image that has one is refused: its programs would
	// silently be this machine's.
	HostMounts bool
	// ShellJob accepts that the root's session and process group, when
	// the image says they were led from outside the tree (the shell that
	// started it), become the restorer's own, as `criu restore
	// --shell-job` does. Without it Execute refuses such an image unless
	// the restorer is in that very session and group, so the numbers are
	// exact (ErrOutsideLeader).
	ShellJob bool
	// HostPIDsAny lets the kernel choose every level-0 pid (`restore
	// --host-pids any`, hostpids.go): no set_tid entry, no cursor write at
	// level 0, every deeper level exact. The plan still names level-0
	// procs, sessions and groups by the image's numbers; Execute maps each
	// to the pid the kernel gave (Restored.HostPIDs).
	HostPIDsAny bool
}

// Proc is one process Execute creates: an image task or a helper.
type Proc struct {
	// Task is the index in Tree.Tasks, or -1 for a helper.
	Task int
	// PIDs at every level, outermost first. A helper may have 0 at outer
	// levels: the kernel chooses those (they are not image pids).
	PIDs []int
	// NS is the proc's pid namespace.
	NS pstree.NSID
	// Why says what a helper is for.
	Why string
}

// IsHelper tells helpers from image tasks.
func (p *Proc) IsHelper() bool { return p.Task < 0 }

// Plan is the complete, ordered description of a restore.
type Plan struct {
	Tree    *pstree.Tree
	Options Options
	Procs   []Proc
	Steps   []Step
	// HostWriter is the helper that writes the level-0 (host) cursor.
	HostWriter int
	// Verify is the index of the OpVerify step: every step before it
	// creates; every step after it finishes (no more clones).
	Verify int
}

func (p *Plan) name(i int) string {
	if i == Restorer {
		return "restorer"
	}
	pr := &p.Procs[i]
	s := fmt.Sprint(pr.PIDs)
	s = strings.ReplaceAll(s[1:len(s)-1], " ", "/")
	if pr.IsHelper() && pr.PIDs[0] == 0 && i != p.HostWriter {
		// its level-0 pid is the kernel's: tell it from the writer
		return fmt.Sprintf("helper[%d] %s", i, s)
	}
	if pr.IsHelper() {
		return "helper " + s
	}
	return "task " + s
}

// String prints the plan one step a line, like `nsinit restore --dry-run`.
func (p *Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %d procs (%d helpers), %d steps\n", len(p.Procs), p.helpers(), len(p.Steps))
	mounter := mounters(p) // exec_mounts.go
	for i, s := range p.Steps {
		d := p.describe(&s)
		if id, ok := mounter[s.Actor]; ok && s.Op == OpPayload {
			d += fmt.Sprintf(" (first: the %d recorded mounts of mount ns %d on %s)",
				len(p.Tree.Namespace(id).Mounts), id, p.Options.Root)
		}
		fmt.Fprintf(&b, "%4d %-16s %s\n", i, p.name(s.Actor), d)
	}
	return b.String()
}

func (p *Plan) helpers() int {
	n := 0
	for i := range p.Procs {
		if p.Procs[i].IsHelper() {
			n++
		}
	}
	return n
}

func (p *Plan) describe(s *Step) string {
	switch s.Op {
	case OpClone:
		var fl []string
		if u := s.NS[pstree.UserNS]; u != 0 {
			fl = append(fl, fmt.Sprintf("CLONE_NEWUSER(user %d)", u))
		}
		if s.NewPIDNS {
			fl = append(fl, "CLONE_NEWPID")
		}
		if s.AsSibling {
			fl = append(fl, "CLONE_PARENT")
		}
		if s.Into != 0 {
			fl = append(fl, fmt.Sprintf("setns(pidns %d)", s.Into))
		}
		if s.Thread != 0 {
			fl = append(fl, fmt.Sprintf("by thread %d", s.Thread))
		}
		why := ""
		if pr := &p.Procs[s.Target]; pr.IsHelper() {
			why = " # " + pr.Why
		}
		if s.SetTID {
			fl = append(fl, "set_tid")
		}
		return fmt.Sprintf("clone %s %s%s", p.name(s.Target), strings.Join(fl, " "), why)
	case OpSetsid:
		return "setsid"
	case OpSubreaper:
		return "prctl(PR_SET_CHILD_SUBREAPER, 1)"
	case OpSetpgid:
		return fmt.Sprintf("setpgid(%d, %d)", s.Arg, s.Arg2)
	case OpThread:
		if s.SetTID {
			return fmt.Sprintf("thread %v set_tid", s.PIDs)
		}
		return fmt.Sprintf("thread %v", s.PIDs)
	case OpLastPID:
		if s.Arg == ParkHostCursor {
			return "ns_last_pid = (back to the host's)"
		}
		if s.Target >= 0 {
			return fmt.Sprintf("ns_last_pid = %d, check %s", s.Arg, p.name(s.Target))
		}
		return fmt.Sprintf("ns_last_pid = %d", s.Arg)
	case OpWait, OpKill:
		if s.Op == OpKill {
			return fmt.Sprintf("kill %s %s", p.name(s.Target), unix.SignalName(syscall.Signal(s.Arg)))
		}
		return fmt.Sprintf("wait %s", p.name(s.Target))
	case OpExit:
		if s.Arg&0x7f != 0 {
			return fmt.Sprintf("die by %s", unix.SignalName(syscall.Signal(s.Arg&0x7f)))
		}
		return fmt.Sprintf("exit %d", s.Arg>>8)
	case OpUnshare, OpSetns:
		var kinds []string
		for k, id := range s.NS {
			if id != 0 {
				kinds = append(kinds, fmt.Sprintf("%v %d", pstree.NSKind(k), id))
			}
		}
		if s.Op == OpSetns {
			return fmt.Sprintf("setns(%s via %s)", strings.Join(kinds, ", "), p.name(s.Target))
		}
		return fmt.Sprintf("unshare(%s)", strings.Join(kinds, ", "))
	case OpUserMap:
		u, g, _ := userMapText(p, s.NS[pstree.UserNS])
		return fmt.Sprintf("write maps of user %d via %s: uid_map %q gid_map %q", s.NS[pstree.UserNS], p.name(s.Target), u, g)
	case OpSetCreds:
		return fmt.Sprintf("setresgid(%d) setresuid(%d)", s.Arg2, s.Arg)
	case OpNetConfig:
		ns := p.Tree.Namespace(s.NS[pstree.NetNS])
		return fmt.Sprintf("configure net %d via %s: %d interfaces, %d routes", ns.ID, p.name(s.Target), len(ns.Links), len(ns.Routes))
	case OpHostname:
		h, d := hostnameOf(p, s.Actor)
		return fmt.Sprintf("sethostname(%q) setdomainname(%q)", h, d)
	case OpSetPFC:
		if s.NewPIDNS {
			return "unshare(CLONE_NEWPID) # pid_for_children"
		}
		return fmt.Sprintf("setns(pidns %d via %s) # pid_for_children", s.Into, p.name(s.Target))
	case OpPayload:
		sr := ""
		if p.isSubreaper(s.Actor) {
			sr = "PR_SET_CHILD_SUBREAPER, "
		}
		if p.Options.Payload == PayloadStopped {
			return "payload " + sr + "park"
		}
		return "payload " + sr + "exec"
	}
	return s.Op.String()
}

// becomesWaiter says whether proc p execs the nsinit binary marked as a
// waiter (internal/waiter) instead of its program: it was waiting for its
// children in the image, and running its program again would launch them
// a second time.
func (p *Plan) becomesWaiter(i int) bool {
	t := p.Procs[i].Task
	if t < 0 || p.Options.AgentExe == "" || p.Options.Payload != PayloadExec {
		return false
	}
	tk := &p.Tree.Tasks[t]
	return tk.WaitsForChildren && !tk.Agent && tk.State == pstree.Live
}

// isSubreaper says whether proc p is a live task the image records as a
// child subreaper: its payload sets the flag again.
func (p *Plan) isSubreaper(i int) bool {
	t := p.Procs[i].Task
	return t >= 0 && p.Tree.SubreapersRecorded && p.Tree.Tasks[t].ChildSubreaper && p.Tree.Tasks[t].State != pstree.Zombie
}

// becomesAgent says whether proc p execs `nsinit agent` (AgentExe) as its
// payload: it was an agent in the image and the payload is exec.
func (p *Plan) becomesAgent(i int) bool {
	t := p.Procs[i].Task
	return t >= 0 && p.Tree.Tasks[t].Agent && p.Options.AgentExe != "" && p.Options.Payload == PayloadExec
}

// agentWindow is where a restored agent's namespace cursor points while the
// agent's runtime starts its threads (agentconn.RuntimeWindow).
func (p *Plan) agentWindow() int {
	return agentconn.RuntimeWindow(p.Options.Features.PidMax)
}

// threadCloners maps each clone step that a thread of its actor performs
// (Step.Thread: the child's parent thread in the image, stopped payload)
// to the actor's OpThread step that created that thread: the builder hands
// the clone to that thread (builder_linux.go, delegate), whose mailbox is
// in that step's record. The model made sure the thread exists by then.
func threadCloners(p *Plan) map[int]int {
	type key struct{ actor, tid int }
	made := map[key]int{}
	out := map[int]int{}
	for i := range p.Steps {
		s := &p.Steps[i]
		switch {
		case s.Op == OpThread:
			made[key{s.Actor, s.PIDs[0]}] = i
		case s.Op == OpClone && s.Thread != 0:
			if j, ok := made[key{s.Actor, s.Thread}]; ok {
				out[i] = j
			}
		}
	}
	return out
}
