package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
)

// This file makes a running agent a restore service for its own pid
// namespace (`nsinit --listen PATH -- CMD`): a client that has no
// capability over the namespace, or no process inside it, sends Restore
// and the agent - PID 1 there, with its capabilities - runs the restore
// inside. The restored tree is detached and ends up as the agent's child,
// so the agent reaps it like any orphan.

// RestoreTimeout bounds one Restore request.
const RestoreTimeout = 5 * time.Minute

// Listen binds the restore socket at path (SOCK_SEQPACKET, mode 0600: the
// file's permissions decide who may connect, as for any daemon socket) and
// serves each connection on a goroutine of its own. A stale socket file is
// replaced. Errors of single connections go to log.
func Listen(path string, log io.Writer) error {
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
	go func() {
		for {
			c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			if err != nil {
				fmt.Fprintf(log, "nsinit: restore socket %s: %v\n", path, err)
				return
			}
			go serveClient(os.NewFile(uintptr(c), "restore-client"), log)
		}
	}()
	return nil
}

// Dial connects to an agent's restore socket.
func Dial(path string) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, fmt.Errorf("connect to agent %s: %w", path, err)
	}
	return NewConn(os.NewFile(uintptr(fd), "agent"), 0)
}

func serveClient(f *os.File, log io.Writer) {
	c, err := NewConn(f, 0)
	if err != nil {
		f.Close()
		return
	}
	defer c.Close()
	err = c.Serve(func(req *agentpb.Request) (*agentpb.Reply, error) {
		switch op := req.Op.(type) {
		case *agentpb.Request_Hello:
			return helloReply(), nil
		case *agentpb.Request_Restore:
			root, err := restoreHere(op.Restore)
			if err != nil {
				return nil, err
			}
			return &agentpb.Reply{Result: &agentpb.Reply_Restored{Restored: &agentpb.Restored{RootPid: int64(root)}}}, nil
		}
		return nil, fmt.Errorf("request %T is not served on the restore socket: %w", req.Op, unix.EOPNOTSUPP)
	})
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		fmt.Fprintf(log, "nsinit: restore client: %v\n", err)
	}
}

// restoreHere runs `nsinit restore -D DIR -d` as a child of the agent,
// inside its namespaces and with its credentials, and returns the root's
// pid. The restorer is a Go process whose runtime threads take pids of
// this namespace: it is started with the namespace's cursor in a high
// window, so they stay off the pids the image needs, and the cursor is put
// back afterwards. The agent's reaper reaps the restorer when it exits, so
// its end is watched through a pidfd and its result read from files.
func restoreHere(r *agentpb.Restore) (int, error) {
	if !filepath.IsAbs(r.ImageDir) {
		return 0, fmt.Errorf("image dir %q is not an absolute path: %w", r.ImageDir, unix.EINVAL)
	}
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "nsinit-restore")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	out, err := os.Create(filepath.Join(tmp, "out"))
	if err != nil {
		return 0, err
	}
	defer out.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	pidfile := filepath.Join(tmp, "pid")
	args := []string{exe, "restore", "-D", r.ImageDir, "-d", "--pidfile", pidfile}
	if r.Payload != "" {
		args = append(args, "--payload", r.Payload)
	}
	if r.Placement != "" {
		args = append(args, "--placement", r.Placement)
	}

	restoreCursor := moveCursorHigh()
	defer restoreCursor()
	p, err := os.StartProcess(exe, args, &os.ProcAttr{Files: []*os.File{null, out, out}})
	if err != nil {
		return 0, fmt.Errorf("start the restorer: %w", err)
	}
	pidfd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		p.Kill()
		return 0, fmt.Errorf("pidfd of the restorer: %w", err)
	}
	defer unix.Close(pidfd)
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(RestoreTimeout/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 0 || err != nil {
			// Not killed: the restorer rolls back by its own deadline,
			// which SIGKILL would skip.
			return 0, fmt.Errorf("the restorer (pid %d) did not finish within %v: %w", p.Pid, RestoreTimeout, unix.ETIMEDOUT)
		}
		break
	}
	if b, err := os.ReadFile(pidfile); err == nil {
		if root, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && root > 0 {
			return root, nil
		}
	}
	msg, _ := os.ReadFile(out.Name())
	return 0, fmt.Errorf("%s", strings.TrimSpace(string(msg)))
}

// moveCursorHigh points this namespace's ns_last_pid at the top of its pid
// range and returns what puts it back. Best effort: without the capability
// the cursor stays, and a clash with the restorer's threads is reported by
// the restore as a taken pid.
// Only the PID 1 of a namespace does it: an agent in a namespace it does not
// lead (subreaper mode) shares the cursor with processes it knows nothing of.
func moveCursorHigh() func() {
	const path = "/proc/sys/kernel/ns_last_pid"
	cur, err := os.ReadFile(path)
	if err != nil || os.Getpid() != 1 {
		return func() {}
	}
	pidMax := 0
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		pidMax, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if writeLastPID(int64(RuntimeWindow(pidMax))) != nil {
		return func() {}
	}
	return func() { os.WriteFile(path, cur, 0) }
}

// RuntimeWindow is where a namespace's cursor points while a Go process
// (a restored agent, a restorer) starts its runtime threads there, so they
// take no pid an image needs: 4,000,000 (a child namespace's pid_max is
// 4,194,304 on 6.18, F1.5), or 256 below pidMax when that is lower - on 6.1
// pid_max is one global value (32768 on a small machine) and a cursor above
// it is EINVAL. pidMax 0: unknown.
func RuntimeWindow(pidMax int) int {
	const window = 4_000_000
	if pidMax > 0 && pidMax-256 < window {
		return pidMax - 256
	}
	return window
}
