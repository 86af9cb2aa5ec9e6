// Package agentconn is the connection of the agent protocol
// (proto/agent.proto documents the messages): a Conn over one end of a
// SOCK_SEQPACKET unix socket, Call for the side that asks, Serve for the
// side that answers, with versions, deadlines, SO_PEERCRED checks and
// descriptors passed along. The restorer (which starts restored agents and
// drives them) and the agent (which serves them and its restore socket)
// both use it; neither imports the other.
package agentconn

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// ProtocolVersion is what every Envelope carries.
const ProtocolVersion = 1

// maxPacket bounds one message, maxFDs the descriptors that come with it.
const (
	maxPacket = 64 << 10
	maxFDs    = 1
)

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
	// IdleTimeout bounds how long ServeOne waits for a request and then
	// for the peer to take the reply (0: forever, for the trusted control
	// socket of a restored agent).
	IdleTimeout time.Duration
	// fds are the descriptors that came with the last request (SCM_RIGHTS),
	// until the handler takes them; the rest are closed after it.
	fds []int
}

// NewConn wraps an end of SocketPair. When peerPID is non-zero the peer's
// SO_PEERCRED pid must be it (the child agent passes its parent's pid).
func NewConn(f *os.File, peerPID int) (*Conn, error) {
	if peerPID != 0 {
		cred, err := PeerCred(f)
		if err != nil {
			return nil, err
		}
		if int(cred.Pid) != peerPID {
			return nil, fmt.Errorf("peer pid %d, want %d: %w", cred.Pid, peerPID, ErrPeer)
		}
	}
	return &Conn{f: f, Timeout: 10 * time.Second}, nil
}

// PeerCred is the socket peer's SO_PEERCRED (pid as seen from the caller's
// pid namespace, 0 for a peer outside it).
func PeerCred(f *os.File) (cred *unix.Ucred, err error) {
	err = Sockopt(f, "SO_PEERCRED", func(fd int) (err error) {
		cred, err = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		return err
	})
	return cred, err
}

// Sockopt runs get on f's descriptor; its error is named after opt.
func Sockopt(f *os.File, opt string, get func(fd int) error) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var gerr error
	if err := raw.Control(func(fd uintptr) { gerr = get(int(fd)) }); err != nil {
		return err
	}
	if gerr != nil {
		return fmt.Errorf("%s: %w", opt, gerr)
	}
	return nil
}

// Close closes the socket and any descriptor received and not taken.
func (c *Conn) Close() error {
	c.closeFDs()
	return c.f.Close()
}

// TakeFD hands the first descriptor that came with the request being
// served to the caller, who must close it; -1 when none came.
func (c *Conn) TakeFD() int {
	if len(c.fds) == 0 {
		return -1
	}
	fd := c.fds[0]
	c.fds = c.fds[1:]
	return fd
}

func (c *Conn) closeFDs() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
}

// send writes one Envelope, with fd (when >= 0) as SCM_RIGHTS, waiting at
// most d for room in the peer's queue (0: forever).
func (c *Conn) send(env *agentpb.Envelope, fd int, d time.Duration) error {
	env.Version = ProtocolVersion
	b, err := proto.Marshal(env)
	if err != nil {
		return err
	}
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if d > 0 {
		_ = c.f.SetWriteDeadline(time.Now().Add(d))
		defer c.f.SetWriteDeadline(time.Time{})
	}
	raw, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Write(func(s uintptr) bool {
		serr = unix.Sendmsg(int(s), b, oob, nil, 0)
		return !errors.Is(serr, unix.EAGAIN)
	}); err != nil {
		serr = err
	}
	if serr != nil {
		if errors.Is(serr, os.ErrDeadlineExceeded) {
			return fmt.Errorf("send: %w", ErrTimeout)
		}
		return fmt.Errorf("send: %w", serr)
	}
	return nil
}

// recv reads one Envelope, waiting at most d (0: forever). Descriptors
// that came with it replace those of the previous one (closed); a packet
// or a set of descriptors larger than the protocol allows is an error (the
// kernel closes descriptors that did not fit).
func (c *Conn) recv(d time.Duration) (*agentpb.Envelope, error) {
	c.closeFDs()
	if d > 0 {
		_ = c.f.SetReadDeadline(time.Now().Add(d))
		defer c.f.SetReadDeadline(time.Time{})
	}
	raw, err := c.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, maxPacket)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	var n, oobn, flags int
	var rerr error
	if err := raw.Read(func(s uintptr) bool {
		n, oobn, flags, _, rerr = unix.Recvmsg(int(s), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN)
	}); err != nil {
		rerr = err
	}
	if rerr != nil {
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			return nil, ErrTimeout
		}
		return nil, fmt.Errorf("receive: %w", rerr)
	}
	if oobn > 0 {
		c.fds = receivedFDs(oob[:oobn])
	}
	switch {
	case flags&unix.MSG_TRUNC != 0:
		return nil, fmt.Errorf("receive: a packet over %d bytes: %w", maxPacket, unix.EMSGSIZE)
	case flags&unix.MSG_CTRUNC != 0:
		return nil, fmt.Errorf("receive: more than %d descriptors: %w", maxFDs, unix.EMSGSIZE)
	case n == 0:
		return nil, fmt.Errorf("receive: %w", io.EOF) // the peer closed (SOCK_SEQPACKET)
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

// receivedFDs are the descriptors of SCM_RIGHTS messages in oob.
func receivedFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// Call sends a request and waits for its reply: the reply on success, a
// *ReplyError for Failed, ErrTimeout, ErrVersion or a socket error.
func (c *Conn) Call(req *agentpb.Request) (*agentpb.Reply, error) {
	return c.CallWithFD(req, -1)
}

// CallWithFD is Call with a descriptor passed along (SCM_RIGHTS), when fd
// is >= 0: the peer gets its own reference to the open file.
func (c *Conn) CallWithFD(req *agentpb.Request, fd int) (*agentpb.Reply, error) {
	c.nextID++
	req.Id = c.nextID
	if err := c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Request{Request: req}}, fd, c.Timeout); err != nil {
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

// ServeOne answers one request and returns it. Descriptors that came with
// the request and that the handler did not take are closed.
func (c *Conn) ServeOne(h Handler) (*agentpb.Request, error) {
	env, err := c.recv(c.IdleTimeout)
	defer c.closeFDs()
	if errors.Is(err, ErrVersion) {
		_ = c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Reply{Reply: failed(env.GetRequest().GetId(), unix.EPROTO, err)}}, -1, c.IdleTimeout)
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
	if err := c.send(&agentpb.Envelope{Body: &agentpb.Envelope_Reply{Reply: rep}}, -1, c.IdleTimeout); err != nil {
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

// ControlFD is the descriptor at which a restored agent finds its end of
// the control socket the restorer made (internal/waiter's mark is at 63).
const ControlFD = 62

// RuntimeWindow is where a namespace's cursor points while a Go process
// (a restored agent, a restorer) starts its runtime threads there, so they
// take no pid an image needs: 4,000,000 (a child namespace's pid_max is
// 4,194,304 on 6.18, docs/kernel.md F1.5), or 256 below pidMax when that
// is lower - on 6.1 pid_max is one global value (32768 on a small machine)
// and a cursor above it is EINVAL. pidMax 0: unknown.
func RuntimeWindow(pidMax int) int {
	const window = 4_000_000
	if pidMax > 0 && pidMax-256 < window {
		return pidMax - 256
	}
	return window
}
