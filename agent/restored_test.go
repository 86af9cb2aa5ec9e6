package agent

import (
	"errors"
	"os"
	"testing"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
)

// TestOpenParentConnRefusesNonAncestor: the socket pair's creator is this
// process itself, not an ancestor of it, so a restored agent would refuse it.
func TestOpenParentConnRefusesNonAncestor(t *testing.T) {
	parent, child, err := agentconn.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	fd, err := unix.Dup(int(child.Fd()))
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenParentConn(fd)
	if err == nil {
		c.Close()
		t.Fatal("a peer that is not an ancestor was accepted")
	}
	if !errors.Is(err, agentconn.ErrPeer) {
		t.Fatalf("error %v, want agentconn.ErrPeer", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		t.Error("the refused control fd was left open")
	}
	if !isAncestor(os.Getppid()) || isAncestor(os.Getpid()) {
		t.Error("isAncestor: the parent must be one, the process itself not")
	}
}

// TestServeRestore: what a restored agent answers - its pid to Hello,
// ENOSYS to CreateTask (the restorer's builders create tasks), and it stops
// serving when the restorer closes its end.
func TestServeRestore(t *testing.T) {
	pc, cc := pair(t)
	done := make(chan error, 1)
	go func() { done <- ServeRestore(cc) }()
	rep, err := pc.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.GetHello().GetPid() != int64(os.Getpid()) {
		t.Errorf("hello: pid %d, want %d", rep.GetHello().GetPid(), os.Getpid())
	}
	_, err = pc.Call(&agentpb.Request{Op: &agentpb.Request_CreateTask{CreateTask: &agentpb.CreateTask{Pids: []int64{5, 2}}}})
	var re *agentconn.ReplyError
	if !errors.As(err, &re) || re.Errno != unix.ENOSYS {
		t.Errorf("create task: %v, want a Failed reply with ENOSYS", err)
	}
	// Finish without a cursor leaves ns_last_pid alone (this is the host's).
	if _, err := pc.Call(&agentpb.Request{Op: &agentpb.Request_Finish{Finish: &agentpb.Finish{}}}); err != nil {
		t.Errorf("finish: %v", err)
	}
	pc.Close()
	if err := <-done; err == nil {
		t.Error("Serve returned nil after the peer closed; want the end-of-file error")
	}
}

// pair is a connected pair of protocol ends, both in this process (the
// peer's pid is our own).
func pair(t *testing.T) (*agentconn.Conn, *agentconn.Conn) {
	t.Helper()
	pf, cf, err := agentconn.SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	p, err := agentconn.NewConn(pf, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	c, err := agentconn.NewConn(cf, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); c.Close() })
	return p, c
}
