package bpf

import (
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kind is what a task did.
type Kind uint32

// The kinds, as in trace.bpf.c's enum kind.
const (
	Fork Kind = 1
	Exit Kind = 2
	Exec Kind = 3
)

func (k Kind) String() string {
	switch k {
	case Fork:
		return "fork"
	case Exit:
		return "exit"
	case Exec:
		return "exec"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// MarshalText makes JSON show the kind by name.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads a kind by name.
func (k *Kind) UnmarshalText(b []byte) error {
	for _, c := range []Kind{Fork, Exit, Exec} {
		if string(b) == c.String() {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("unknown event kind %q", b)
}

// Flags, as in trace.bpf.c's enum flag.
const (
	flagThread    = 1
	flagByNS      = 2
	flagByTgid    = 4
	flagGroupDead = 8
)

// Event is one fork, exit or exec of a watched task.
//
// Threads are tasks too: creating a thread (CLONE_THREAD) is a Fork with
// Thread set, and every thread's exit is an Exit (the last one with
// GroupDead set). A dump records threads, so a thread coming or going
// during a dump is a race like any other.
type Event struct {
	Kind Kind `json:"kind"`
	// Pids is the task's pid (its tid for a thread) at every pid namespace
	// level, outermost (level 0, the kernel's) first: the child for a Fork.
	Pids []int `json:"pids"`
	// Tgid is the level-0 process id of the task (differs from Pids[0] for
	// a thread).
	Tgid int `json:"tgid"`
	// ParentTid is, for a Fork, the level-0 tid of the forking task.
	ParentTid int `json:"parent_tid,omitempty"`
	// ParentTgid is the level-0 process id of the forking process (Fork) or
	// of the real parent (Exit, Exec).
	ParentTgid int `json:"ppid"`
	// ExitStatus is, for an Exit, the wait status (code<<8 | signal).
	ExitStatus *int   `json:"exit_status,omitempty"`
	Comm       string `json:"comm"`
	Thread     bool   `json:"thread,omitempty"`
	GroupDead  bool   `json:"group_dead,omitempty"`
	// ByNS and ByTgid tell how the task matched; NSInode is the innermost
	// watched pid namespace it is in (0 if none).
	ByNS    bool   `json:"by_ns,omitempty"`
	ByTgid  bool   `json:"by_pid,omitempty"`
	NSInode uint32 `json:"ns_inode,omitempty"`
}

// String is one line such as "fork 1234 -> 1240 [1240 3] comm=sh",
// "exit 1238 [1238 2] exited 1 comm=sh", "exec 1239 [1239 4] comm=ls";
// the exit status is spelled as strace does (ExitText), the raw wait
// status is in the JSON form.
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Kind.String())
	if e.Thread {
		b.WriteString(" thread")
	}
	switch e.Kind {
	case Fork:
		fmt.Fprintf(&b, " %d -> %d", e.ParentTid, e.Pids[0])
	default:
		if len(e.Pids) > 0 {
			fmt.Fprintf(&b, " %d", e.Pids[0])
		}
	}
	fmt.Fprintf(&b, " %v", e.Pids)
	if e.Thread {
		fmt.Fprintf(&b, " tgid=%d", e.Tgid)
	}
	if e.ExitStatus != nil {
		fmt.Fprintf(&b, " %s", ExitText(*e.ExitStatus))
	}
	fmt.Fprintf(&b, " comm=%s", e.Comm)
	return b.String()
}

// ExitText spells a wait status the way strace ends a process: "exited 11",
// "killed by SIGKILL", "killed by SIGSEGV (core dumped)". Real-time signals
// are SIGRTMIN+N, counted from the C library's SIGRTMIN (34) as kill -l
// does.
func ExitText(status int) string {
	ws := syscall.WaitStatus(status)
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited %d", ws.ExitStatus())
	case ws.Signaled():
		s := "killed by " + SignalName(ws.Signal())
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("status %#x", status)
}

// SignalName is "SIGTERM", "SIGRTMIN+3", or "signal 33" for the two
// numbers the C library keeps below its SIGRTMIN.
func SignalName(sig syscall.Signal) string {
	const rtmin = 34
	switch {
	case sig >= rtmin && sig <= 64:
		if sig == rtmin {
			return "SIGRTMIN"
		}
		return fmt.Sprintf("SIGRTMIN+%d", sig-rtmin)
	case unix.SignalName(sig) != "":
		return unix.SignalName(sig)
	}
	return fmt.Sprintf("signal %d", int(sig))
}
