package bpf

import (
	"fmt"
	"strings"
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
// "exit 1238 [1238 2] status 0x100 comm=sh", "exec 1239 [1239 4] comm=ls".
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
		fmt.Fprintf(&b, " status %#x", *e.ExitStatus)
	}
	fmt.Fprintf(&b, " comm=%s", e.Comm)
	return b.String()
}
