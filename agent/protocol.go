package agent

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// This file is the agent side of the parent-to-child agent protocol
// (proto/agent.proto documents the messages): a Conn over one end of a
// SOCK_SEQPACKET socket pair, Call for the parent, Serve for the child.

// ProtocolVersion is what every Envelope carries.
const ProtocolVersion = 1

// maxPacket bounds one message.
const maxPacket = 64 << 10

// Errors callers branch on.
var (
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("agent protocol version mismatch")
	// ErrPeer: the socket's peer is not the expected process (SO_PEERCRED).
	ErrPeer = errors.New("agent protocol peer refused")
	// ErrTimeout: no reply in time; the restore must abort.
	ErrTimeout = errors.New("agent did not answer")
)

// ReplyError is a Failed reply: the errno and the task it concerns.
type ReplyError struct {
	Errno unix.Errno
	PIDs  []int64
	Msg   string
}

func (e *ReplyError) Error() string {
	if len(e.PIDs) == 0 {
		return fmt.Sprintf("agent: %s (%v)", e.Msg, e.Errno)
	}
	return fmt.Sprintf("agent: %s (task %v): %v", e.Msg, e.PIDs, e.Errno)
}

func (e *ReplyError) Unwrap() error { return e.Errno }

// SocketPair makes the two ends: the parent keeps the first, the child
// agent gets the second (as an inherited fd). Both are close-on-exec and
// non-blocking (so os.File deadlines, hence Call timeouts, work).
func SocketPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "agent-parent"), os.NewFile(uintptr(fds[1]), "agent-child"), nil
}

// Conn is one end of the agent socket.
type Conn struct {
	f       *os.File
	nextID  uint64
	Timeout time.Duration // per request; default 10s
}

// NewConn wraps an end of SocketPair. When peerPID is non-zero the peer's
// SO_PEERCRED pid must be it (the child agent passes its parent's pid).
func NewConn(f *os.File, peerPID int) (*Conn, error) {
	if peerPID != 0 {
		cred, err := peerCred(f)
		if err != nil {
			return nil, err
		}
		if int(cred.Pid) != peerPID {
			return nil, fmt.Errorf("peer pid %d, want %d: %w", cred.Pid, peerPID, ErrPeer)
		}
	}
	return &Conn{f: f, Timeout: 10 * time.Second}, nil
}

// peerCred is the socket peer's SO_PEERCRED (pid as seen from the caller's
// pid namespace, 0 for a peer outside it).
func peerCred(f *os.File) (*unix.Ucred, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.f.Close() }

func (c *Conn) send(env *agentpb.Envelope) error {
	env.Version = ProtocolVersion
	b, err := proto.Marshal(env)
	if err != nil {
		return err
	}
	if _, err := c.f.Write(b); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// recv reads one Envelope, waiting at most d (0: forever).
func (c *Conn) recv(d time.Duration) (*agentpb.Envelope, error) {
	if d > 0 {
		_ = c.f.SetReadDeadline(time.Now().Add(d))
		defer c.f.SetReadDeadline(time.Time{})
	}
	buf := make([]byte, maxPacket)
	n, err := c.f.Read(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, ErrTimeout
		}
		return nil, fmt.Errorf("receive: %w", err)
	}
	env := &agentpb.Envelope{}
	if err := proto.Unmarshal(buf[:n], env); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if env.Version != ProtocolVersion {
		return env, fmt.Errorf("peer speaks version %d, this is %d: %w", env.Version, ProtocolVersion, ErrVersion)
	}
	return env, nil
}

// Call sends a request and waits for its reply: the reply on success, a
// *ReplyError for Failed, ErrTimeout, ErrVersion or a socket error.
func (c *Conn) Call(req *agentpb.Request) (*agentpb.Reply, error) {
	c.nextID++
	req.Id = c.nextID
	if err := c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Request{Request: req}}); err != nil {
		return nil, err
	}
	env, err := c.recv(c.Timeout)
	if err != nil {
		return nil, err
	}
	rep := env.GetReply()
	if rep == nil || rep.Id != req.Id {
		return nil, fmt.Errorf("reply to request %d out of order: %v", req.Id, env)
	}
	if f := rep.GetFailed(); f != nil {
		return rep, &ReplyError{Errno: unix.Errno(f.Errno), PIDs: f.Pids, Msg: f.Message}
	}
	return rep, nil
}

// Handler performs one request on the child side and returns the reply's
// result; an error becomes Failed (with its errno when it wraps one).
type Handler func(req *agentpb.Request) (*agentpb.Reply, error)

// Serve answers requests until the peer closes the socket or sends Abort
// (answered, then Serve returns). A request of another version is answered
// Failed{EPROTO} and ends Serve with ErrVersion.
func (c *Conn) Serve(h Handler) error {
	for {
		req, err := c.ServeOne(h)
		if err != nil {
			return err
		}
		if req.GetAbort() != nil {
			return nil
		}
	}
}

// ServeOne answers one request and returns it.
func (c *Conn) ServeOne(h Handler) (*agentpb.Request, error) {
	env, err := c.recv(0)
	if errors.Is(err, ErrVersion) {
		_ = c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Reply{Reply: failed(env.GetRequest().GetId(), unix.EPROTO, err)}})
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	req := env.GetRequest()
	if req == nil {
		return nil, fmt.Errorf("expected a request, got %v", env)
	}
	rep, herr := h(req)
	if herr != nil {
		var errno unix.Errno
		if !errors.As(herr, &errno) {
			errno = unix.EIO
		}
		rep = failed(req.Id, errno, herr)
	}
	if rep == nil {
		rep = &agentpb.Reply{Result: &agentpb.Reply_Done{Done: &agentpb.Done{}}}
	}
	rep.Id = req.Id
	if err := c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Reply{Reply: rep}}); err != nil {
		return nil, err
	}
	return req, nil
}

func failed(id uint64, errno unix.Errno, err error) *agentpb.Reply {
	f := &agentpb.Failed{Errno: int32(errno), Message: err.Error()}
	var re *ReplyError
	if errors.As(err, &re) {
		f.Pids = re.PIDs
	}
	return &agentpb.Reply{Id: id, Result: &agentpb.Reply_Failed{Failed: f}}
}
