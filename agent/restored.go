package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
)

// This file is the child side of the agent protocol as a restored agent
// serves it: `nsinit restore` execs the agent with its original command
// line and one end of a socket pair at agentconn.ControlFD. Once every task of the
// tree exists the restorer greets it (Hello), tells it which child to adopt
// instead of starting its command and which zombie children to keep
// (Adopt), and has it put its namespace's ns_last_pid back (Finish). The
// restorer's builder processes create the tasks, so CreateTask is not
// served.

// RestoredControl returns the control connection when this process is a
// restored agent - agentconn.ControlFD is a unix SOCK_SEQPACKET socket - and nil
// otherwise. An error means it looks like one but the peer is refused.
func RestoredControl() (*agentconn.Conn, error) {
	typ, err := unix.GetsockoptInt(agentconn.ControlFD, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_SEQPACKET {
		return nil, nil
	}
	if dom, err := unix.GetsockoptInt(agentconn.ControlFD, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || dom != unix.AF_UNIX {
		return nil, nil
	}
	return OpenParentConn(agentconn.ControlFD)
}

// AwaitAdoption answers the restorer (Hello) until it says what to adopt
// (Adopt) and fills cfg.Adopt and cfg.Keep. The restorer sends it once
// every task exists, right after the exec.
func AwaitAdoption(c *agentconn.Conn, cfg *Config) error {
	for cfg.Adopt == 0 {
		req, err := c.ServeOne(func(req *agentpb.Request) (*agentpb.Reply, error) {
			switch op := req.Op.(type) {
			case *agentpb.Request_Hello:
				return helloReply(), nil
			case *agentpb.Request_Adopt:
				if op.Adopt.Child <= 0 {
					return nil, fmt.Errorf("adopt pid %d: %w", op.Adopt.Child, unix.EINVAL)
				}
				return nil, nil
			}
			return nil, fmt.Errorf("request %T before Adopt: %w", req.Op, unix.EPROTO)
		})
		if err != nil {
			return fmt.Errorf("restorer connection: %w", err)
		}
		if a := req.GetAdopt(); a != nil && a.Child > 0 {
			cfg.Adopt = int(a.Child)
			cfg.Keep = map[int]bool{}
			for _, k := range a.Keep {
				cfg.Keep[int(k)] = true
			}
		}
	}
	return nil
}

// OpenParentConn wraps the inherited control socket fd of a restored agent
// and checks, through SO_PEERCRED, that the peer (the process that made the
// socket pair: the restorer) is an ancestor of the agent. An agent that is
// PID 1 of its namespace sees its parent and the restorer, both outside the
// namespace, as pid 0; any other agent finds the restorer up its chain of
// parents.
func OpenParentConn(fd int) (*agentconn.Conn, error) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil, fmt.Errorf("control fd %d: %w", fd, err)
	}
	// Close-on-exec again (the command it may start must not inherit it);
	// non-blocking so that reads honour deadlines.
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("control fd %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(fd), "agent-control")
	c, err := agentconn.NewConn(f, 0)
	if err != nil {
		f.Close()
		return nil, err
	}
	cred, err := agentconn.PeerCred(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if !isAncestor(int(cred.Pid)) {
		f.Close()
		return nil, fmt.Errorf("control socket peer pid %d is not an ancestor of the agent: %w", cred.Pid, agentconn.ErrPeer)
	}
	return c, nil
}

// ServeRestore answers the restorer after the adoption until it closes the
// socket: Hello with the agent's pid and pid-namespace depth, SetCursor and
// Finish by writing
// ns_last_pid, Abort with Done (the restorer kills what it created; the
// agent created nothing itself).
func ServeRestore(c *agentconn.Conn) error {
	return c.Serve(func(req *agentpb.Request) (*agentpb.Reply, error) {
		switch op := req.Op.(type) {
		case *agentpb.Request_Hello:
			return helloReply(), nil
		case *agentpb.Request_SetCursor:
			return nil, procfs.WriteLastPID(int(op.SetCursor.Value))
		case *agentpb.Request_Finish:
			if op.Finish.LastPid > 0 {
				return nil, procfs.WriteLastPID(int(op.Finish.LastPid))
			}
			return nil, nil
		case *agentpb.Request_Abort:
			return nil, nil
		case *agentpb.Request_CreateTask:
			return nil, fmt.Errorf("create task %v: a restored agent does not create tasks (the restorer's builders do): %w", op.CreateTask.Pids, unix.ENOSYS)
		}
		return nil, fmt.Errorf("unknown request %T: %w", req.Op, unix.EOPNOTSUPP)
	})
}

// isAncestor says whether pid is the caller's parent, grandparent, ... as
// the caller's pid namespace numbers them (0: outside it, which is where
// the parent of a namespace's PID 1 is).
func isAncestor(pid int) bool {
	p := os.Getppid()
	for seen := 0; seen < 4096; seen++ {
		if p == pid {
			return true
		}
		if p == 0 || !ownProcfs() {
			return false
		}
		st, err := procfs.New("/proc").Stat(p)
		if err != nil {
			return false
		}
		p = st.PPid
	}
	return false
}

// ownProcfs says whether /proc numbers processes as the caller's pid
// namespace does (a namespace's tasks may see an ancestor's procfs).
func ownProcfs() bool {
	self, err := os.Readlink("/proc/self")
	return err == nil && self == strconv.Itoa(os.Getpid())
}

// helloReply is an agent's answer to Hello: its pid and namespace depth.
func helloReply() *agentpb.Reply {
	return &agentpb.Reply{Result: &agentpb.Reply_Hello{Hello: &agentpb.HelloReply{
		Level: uint32(procfsDepth()), Pid: int64(os.Getpid()),
	}}}
}

// procfsDepth is the number of pid namespaces above the agent's that its
// /proc shows (NSpid has one entry per level the procfs' namespace sees).
func procfsDepth() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	return max(len(strings.Fields(procfs.StatusField(b, "NSpid")))-1, 0)
}
