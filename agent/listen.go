package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
)

// This file makes a running agent a restore service for its own pid
// namespace (`nsinit --listen PATH -- CMD`): a client that has no
// capability over the namespace, or no process inside it, sends Restore
// and the agent - PID 1 there, with its capabilities - runs the restore
// inside. The restored tree is detached and ends up as the agent's child,
// so the agent reaps it like any orphan.
//
// Threat model (docs/security.md, "The restore service"): whoever can
// restore an image can run any program with any credentials the agent can
// give, so the service is a root shell for its clients. It therefore
// serves only clients whose uid, as the agent's user namespace sees it
// (SO_PEERCRED), is the agent's own effective uid, on a path socket of mode
// 0600 (never an abstract name, which no file permission protects). Other
// uids are served only when named (--listen-uid), and their restorer runs
// with their ids, groups and CAP_CHECKPOINT_RESTORE alone, so the kernel
// refuses whatever the image asks beyond what they could do. The
// image directory comes from the client as an open descriptor
// (SCM_RIGHTS), so the agent reads only what the client itself could
// open; only the restorer's own error lines go back. Every read has a
// deadline, the number of connections is capped, one restore runs at a
// time, and a restorer that outlives RestoreTimeout is stopped (SIGTERM:
// it rolls back) and then killed.

// RestoreTimeout bounds one Restore request.
const RestoreTimeout = 5 * time.Minute

// Limits of the restore service (variables: tests shorten them).
var (
	// clientIdleTimeout bounds the wait for a client's next request and
	// for it to take a reply.
	clientIdleTimeout = 30 * time.Second
	// maxClients caps the connections served at once; more are closed at
	// once, so a flood cannot exhaust the agent's descriptors or threads.
	maxClients = 16
	// restorerGrace is how long a restorer that outlived RestoreTimeout
	// has, after SIGTERM, to roll back before it is killed.
	restorerGrace = 30 * time.Second
)

// maxErrorReply bounds the restorer's message sent back to a client.
const maxErrorReply = 4 << 10

// ErrAbstractSocket: --listen was given an abstract socket name.
var ErrAbstractSocket = errors.New("abstract unix socket names are not protected by file permissions")

// Listen binds the restore socket at path (SOCK_SEQPACKET, mode 0600: the
// file's permissions are the first gate, SO_PEERCRED the second) and
// serves each connection on a goroutine of its own: clients of the agent's
// own uid, and of the uids in others with their own rights. A stale socket
// file is replaced. Errors of single connections go to log.
func Listen(path string, others []uint32, log io.Writer) error {
	if path == "" || path[0] == '@' || strings.IndexByte(path, 0) >= 0 {
		return fmt.Errorf("listen %q: %w (give a path)", path, ErrAbstractSocket)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	old := unix.Umask(0o177)
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Umask(old)
	if err == nil {
		err = unix.Listen(fd, 8)
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("listen %s: %w", path, err)
	}
	s := &service{log: log, uid: uint32(os.Geteuid()), others: others, slots: make(chan struct{}, maxClients)}
	go s.accept(fd, path)
	return nil
}

// service is the restore socket's state: who may restore, the connection
// slots, and the one restore that may run at a time.
type service struct {
	log       io.Writer
	uid       uint32   // the agent's own: served with its rights
	others    []uint32 // served with their own rights (--listen-uid)
	slots     chan struct{}
	restoring sync.Mutex
}

// accept serves connections until the socket fails for good. Running out
// of descriptors or memory is temporary: the loop waits and goes on
// instead of leaving the namespace without its service.
func (s *service) accept(fd int, path string) {
	backoff := 10 * time.Millisecond
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		switch {
		case err == nil:
			backoff = 10 * time.Millisecond
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
			fmt.Fprintf(s.log, "nsinit: restore socket %s: %v (retrying)\n", path, err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		default:
			fmt.Fprintf(s.log, "nsinit: restore socket %s: %v\n", path, err)
			return
		}
		f := os.NewFile(uintptr(c), "restore-client")
		select {
		case s.slots <- struct{}{}:
			go func() {
				defer func() { <-s.slots }()
				s.serveClient(f)
			}()
		default:
			fmt.Fprintf(s.log, "nsinit: restore socket %s: %d clients already connected, one refused\n", path, maxClients)
			f.Close()
		}
	}
}

// Dial connects to an agent's restore socket.
func Dial(path string) (*agentconn.Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, fmt.Errorf("connect to agent %s: %w", path, err)
	}
	return agentconn.NewConn(os.NewFile(uintptr(fd), "agent"), 0)
}

func (s *service) serveClient(f *os.File) {
	c, err := agentconn.NewConn(f, 0)
	if err != nil {
		f.Close()
		return
	}
	defer c.Close()
	c.IdleTimeout = clientIdleTimeout
	cred, err := agentconn.PeerCred(f)
	if err != nil {
		fmt.Fprintf(s.log, "nsinit: restore client: %v\n", err)
		return
	}
	var as *clientIDs // nil: the agent's own uid, its own rights
	if cred.Uid != s.uid && slices.Contains(s.others, cred.Uid) {
		if as, err = clientIDsOf(f, cred); err != nil {
			fmt.Fprintf(s.log, "nsinit: restore client: %v\n", err)
			return
		}
	}
	err = c.Serve(func(req *agentpb.Request) (*agentpb.Reply, error) {
		if cred.Uid != s.uid && as == nil {
			return nil, fmt.Errorf("uid %d may not use this restore socket (only uid %d, the agent's own, and those given with --listen-uid): %w", cred.Uid, s.uid, unix.EPERM)
		}
		switch op := req.Op.(type) {
		case *agentpb.Request_Hello:
			return helloReply(), nil
		case *agentpb.Request_Restore:
			dir := c.TakeFD()
			if dir < 0 {
				return nil, fmt.Errorf("restore: the image directory must come as an open descriptor (SCM_RIGHTS): %w", unix.EINVAL)
			}
			// One owner of the descriptor: an os.File (closed here), not a
			// raw fd closed here beside an os.File whose finalizer would
			// close the number again, maybe someone else's by then.
			dirFile := os.NewFile(uintptr(dir), "image-dir")
			defer dirFile.Close()
			if !s.restoring.TryLock() {
				return nil, fmt.Errorf("restore: another restore is running in this namespace: %w", unix.EBUSY)
			}
			defer s.restoring.Unlock()
			root, err := restoreHere(op.Restore, dirFile, as)
			if err != nil {
				return nil, err
			}
			return &agentpb.Reply{Result: &agentpb.Reply_Restored{Restored: &agentpb.Restored{RootPid: int64(root)}}}, nil
		}
		return nil, fmt.Errorf("request %T is not served on the restore socket: %w", req.Op, unix.EOPNOTSUPP)
	})
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		fmt.Fprintf(s.log, "nsinit: restore client (uid %d): %v\n", cred.Uid, err)
	}
}

// restoreHere runs `nsinit restore -D DIR -d` as a child of the agent,
// inside its namespaces and with its credentials, where DIR is the
// client's directory descriptor dir (inherited as fd 3), and returns the
// root's pid. The restorer is a Go process whose runtime threads take pids
// of this namespace: it is started with the namespace's cursor in a high
// window, so they stay off the pids the image needs, and the cursor is put
// back afterwards. The agent's reaper reaps the restorer when it exits, so
// its end is watched through a pidfd and its result read from files.
func restoreHere(r *agentpb.Restore, dir *os.File, as *clientIDs) (int, error) {
	if fi, err := dir.Stat(); err != nil || !fi.IsDir() {
		return 0, fmt.Errorf("restore: the descriptor sent is not a directory: %w", unix.ENOTDIR)
	}
	if !slices.Contains([]string{"", "exec", "stopped"}, r.Payload) || !slices.Contains([]string{"", "set_tid", "ns_last_pid"}, r.Placement) {
		return 0, fmt.Errorf("restore: payload %q or placement %q unknown: %w", r.Payload, r.Placement, unix.EINVAL)
	}
	exe, err := restorerExe()
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "nsinit-restore")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	attr := &os.ProcAttr{}
	if as != nil {
		// Its restorer writes the pidfile here.
		if err := os.Chown(tmp, int(as.uid), int(as.gid)); err != nil {
			return 0, err
		}
		attr.Sys = as.sysProcAttr()
	}
	msgs, err := os.Create(filepath.Join(tmp, "stderr"))
	if err != nil {
		return 0, err
	}
	defer msgs.Close()
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	pidfile := filepath.Join(tmp, "pid")
	// The restored root is born into the agent's session and group: in
	// the agent's namespace there is no other outside leader it could join.
	args := []string{exe, "restore", "-D", "/proc/self/fd/3", "-d", "--shell-job", "--pidfile", pidfile}
	if r.Payload != "" {
		args = append(args, "--payload", r.Payload)
	}
	if r.Placement != "" {
		args = append(args, "--placement", r.Placement)
	}

	restoreCursor := moveCursorHigh()
	defer restoreCursor()
	attr.Files = []*os.File{null, null, msgs, dir}
	p, err := os.StartProcess(exe, args, attr)
	if err != nil {
		return 0, fmt.Errorf("start the restorer: %w", err)
	}
	pidfd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		p.Kill()
		return 0, fmt.Errorf("pidfd of the restorer: %w", err)
	}
	defer unix.Close(pidfd)
	if !waitPidfd(pidfd, RestoreTimeout) {
		// SIGTERM first: the restorer rolls back what it created; a
		// restorer that cannot is killed (its builders notice and go).
		unix.PidfdSendSignal(pidfd, unix.SIGTERM, nil, 0)
		if !waitPidfd(pidfd, restorerGrace) {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			waitPidfd(pidfd, -1)
		}
		return 0, fmt.Errorf("the restorer (pid %d) did not finish within %v and was stopped: %w", p.Pid, RestoreTimeout, unix.ETIMEDOUT)
	}
	if root, err := readPidfile(pidfile); err == nil && root > 0 {
		return root, nil
	}
	return 0, errors.New(restorerMessage(msgs))
}

// readPidfile reads the restorer's pidfile in a directory the restorer
// may own (a restore for another uid): a symlink, a FIFO or an endless
// file in its place must not make the agent read what it should not, or
// wait.
func readPidfile(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("pidfile %s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// restorerExe is the binary run as the restorer: this one (tests point it
// at the built nsinit).
var restorerExe = os.Executable

// clientIDs are the ids a client of another uid restores with.
type clientIDs struct {
	uid, gid uint32
	groups   []uint32
}

// clientIDsOf reads the client's ids and supplementary groups as the
// kernel recorded them when it connected (SO_PEERCRED, SO_PEERGROUPS).
func clientIDsOf(f *os.File, cred *unix.Ucred) (*clientIDs, error) {
	var groups string
	if err := agentconn.Sockopt(f, "SO_PEERGROUPS", func(fd int) (err error) {
		groups, err = unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS)
		return err
	}); err != nil {
		return nil, err
	}
	ids := &clientIDs{uid: cred.Uid, gid: cred.Gid}
	for b := []byte(groups); len(b) >= 4; b = b[4:] {
		ids.groups = append(ids.groups, binary.NativeEndian.Uint32(b))
	}
	return ids, nil
}

// sysProcAttr starts the restorer with the client's ids and groups and no
// capability but CAP_CHECKPOINT_RESTORE (ambient, so it survives the exec),
// which chooses pids and nothing else: every credential, namespace and
// capability the image asks for is then the kernel's to refuse as it
// would refuse the client. The restorer clears its ambient and inheritable
// sets before it creates a task (restorer.Execute), so no restored task
// keeps it.
func (c *clientIDs) sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: c.uid, Gid: c.gid, Groups: c.groups},
		AmbientCaps: []uintptr{unix.CAP_CHECKPOINT_RESTORE},
	}
}

// waitPidfd waits until the process of pidfd exits, at most d (d < 0:
// without bound), and says whether it did.
func waitPidfd(pidfd int, d time.Duration) bool {
	ms := -1
	if d >= 0 {
		ms = int(d / time.Millisecond)
	}
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// restorerMessage is what a failed restorer said about itself: only its
// own lines ("nsinit restore: ..."), printable, at most maxErrorReply
// bytes. Whatever else reached its stderr (a payload's output) stays here.
func restorerMessage(f *os.File) string {
	b, _ := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	var out []string
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "nsinit restore: ") {
			continue
		}
		l = strings.Map(func(r rune) rune {
			if r < ' ' || r == 0x7f || r == utf8.RuneError {
				return '?'
			}
			return r
		}, l)
		if n+len(l) > maxErrorReply {
			break
		}
		n += len(l)
		out = append(out, l)
	}
	if len(out) == 0 {
		return "nsinit restore: the restorer failed without a message"
	}
	return strings.Join(out, "\n")
}

// moveCursorHigh points this namespace's ns_last_pid at the top of its pid
// range and returns what puts it back. Best effort: without the capability
// the cursor stays, and a clash with the restorer's threads is reported by
// the restore as a taken pid.
// Only the PID 1 of a namespace does it: an agent in a namespace it does not
// lead (subreaper mode) shares the cursor with processes it knows nothing of.
func moveCursorHigh() func() {
	cur, err := procfs.ReadLastPID()
	if err != nil || os.Getpid() != 1 {
		return func() {}
	}
	pidMax, _ := procfs.PidMax() // 0 if unknown: RuntimeWindow's default
	if procfs.WriteLastPID(agentconn.RuntimeWindow(pidMax)) != nil {
		return func() {}
	}
	return func() { procfs.WriteLastPID(cur) }
}
