package restorer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/nscursor"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/proto/agentpb"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// The restorer is the top of the agent chain. Every task that was an nsinit
// agent in the image execs this nsinit with its original command line as
// its payload, with one end of a socket pair at agentconn.ControlFD
// (proto/agent.proto); once every task exists the restorer greets each
// agent, tells it which child to adopt and which zombies to keep, and has
// it put its namespace's ns_last_pid back (its Go runtime's threads took
// pids after the cursor the restorer set). An agent that dies, stops
// answering within the timeout or answers wrongly aborts the restore,
// which kills and reaps the whole tree.

// agentLink is the restorer's side of one restored agent's control socket.
type agentLink struct {
	proc   int      // the agent's proc
	parent *os.File // the restorer's end
	child  *os.File // the agent's end: inherited through its exec
	// adopt and keep are what the agent supervises instead of starting its
	// command: its first live child and its zombie children (pids in its
	// own namespace).
	adopt int
	keep  []int64
}

// DefaultAgentTimeout bounds each agent-protocol request.
const DefaultAgentTimeout = 10 * time.Second

// openAgentLinks makes a socket pair for every proc that becomes an agent.
// Both ends are close-on-exec: the agent's builder clears the flag on its
// own end in a private copy of the fd table just before its exec.
func openAgentLinks(p *Plan) (map[int]*agentLink, error) {
	links := map[int]*agentLink{}
	for i := range p.Procs {
		if !p.becomesAgent(i) {
			continue
		}
		adopt, keep, err := adoption(p, p.Procs[i].Task)
		if err != nil {
			closeAgentLinks(links)
			return nil, err
		}
		parent, child, err := agentconn.SocketPair()
		if err != nil {
			closeAgentLinks(links)
			return nil, fmt.Errorf("control socket for %s: %w", p.name(i), err)
		}
		links[i] = &agentLink{proc: i, parent: parent, child: child, adopt: adopt, keep: keep}
	}
	return links, nil
}

// adoption is what agent task ti supervises once restored: its first live
// child of the image, and its zombie children, which it must never reap.
func adoption(p *Plan, ti int) (adopt int, keep []int64, err error) {
	tr := p.Tree
	a := &tr.Tasks[ti]
	lvl := a.Level()
	for i := range tr.Tasks {
		c := &tr.Tasks[i]
		if c.PPID != a.PID() || len(c.PIDs) <= lvl {
			continue
		}
		switch {
		case c.State == pstree.Zombie:
			keep = append(keep, int64(c.PIDs[lvl]))
		case adopt == 0:
			adopt = c.PIDs[lvl]
		}
	}
	if adopt == 0 {
		return 0, nil, fmt.Errorf("agent %v has no live child to adopt: %w", a.PIDs, ErrUnsupported)
	}
	return adopt, keep, nil
}

// closeAgentLinks closes every end still open.
func closeAgentLinks(links map[int]*agentLink) {
	for _, l := range links {
		for _, f := range []*os.File{l.parent, l.child} {
			if f != nil {
				f.Close()
			}
		}
	}
}

// greetAgents runs once every payload has exec'd: the agents' ends are
// theirs now (the restorer closes its copies, so an agent's death reads as
// end of file), each agent must answer Hello with its pid, then Finish with
// its namespace's final cursor.
func (t *tx) greetAgents(timeout time.Duration) error {
	for _, l := range t.links {
		l.child.Close()
		l.child = nil
	}
	for i := range t.p.Procs {
		l := t.links[i]
		if l == nil {
			continue
		}
		if err := t.greetAgent(l, timeout); err != nil {
			return fmt.Errorf("agent %s: %w", t.p.name(i), err)
		}
	}
	return nil
}

func (t *tx) greetAgent(l *agentLink, timeout time.Duration) error {
	c, err := agentconn.NewConn(l.parent, 0)
	if err != nil {
		return err
	}
	c.Timeout = timeout
	pr := &t.p.Procs[l.proc]
	rep, err := c.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}})
	if err != nil {
		return agentCallError("hello", err, timeout)
	}
	want := pr.PIDs[len(pr.PIDs)-1]
	if got := rep.GetHello().GetPid(); got != int64(want) {
		return fmt.Errorf("hello: the agent says it is pid %d of its namespace, want %d", got, want)
	}
	if _, err := c.Call(&agentpb.Request{Op: &agentpb.Request_Adopt{Adopt: &agentpb.Adopt{Child: int64(l.adopt), Keep: l.keep}}}); err != nil {
		return agentCallError(fmt.Sprintf("adopt %d", l.adopt), err, timeout)
	}
	last := 0
	tk := &t.p.Tree.Tasks[pr.Task]
	if ns := t.p.Tree.Namespace(tk.NS[pstree.PidNS]); ns != nil && ns.Level > 0 && tk.InnerPID() == 1 {
		last = ns.LastPID
	}
	_, err = c.Call(&agentpb.Request{Op: &agentpb.Request_Finish{Finish: &agentpb.Finish{LastPid: int64(last)}}})
	if errors.Is(err, unix.EPERM) && last > 0 {
		// The agent runs with the image's capabilities, which may not
		// cover its own cursor (a container's init without
		// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE): the restorer writes
		// it through a probe forked into the namespace.
		err = writeCursorOf(t.hostPID(l.proc), last)
	}
	if err != nil {
		return agentCallError(fmt.Sprintf("finish (ns_last_pid %d)", last), err, timeout)
	}
	return nil
}

// writeCursorOf sets the cursor of the pid namespace of level-0 pid.
func writeCursorOf(pid, v int) error {
	fd, err := procfs.New("/proc").OpenNS(pid, "pid")
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return nscursor.Write(fd, v)
}

// agentCallError names what the agent failed to do.
func agentCallError(what string, err error, timeout time.Duration) error {
	switch {
	case errors.Is(err, agentconn.ErrTimeout):
		return fmt.Errorf("%s: no answer within %v: %w", what, timeout, err)
	case errors.Is(err, io.EOF), errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.EPIPE):
		return fmt.Errorf("%s: the agent closed its socket (it died or exited): %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
