package agentconn

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	pf, cf, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	// Both ends are in this process: the peer's pid is our own.
	p, err := NewConn(pf, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConn(cf, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); c.Close() })
	return p, c
}

func TestProtocolRoundTrip(t *testing.T) {
	p, c := pair(t)
	done := make(chan error, 1)
	go func() {
		done <- c.Serve(func(req *agentpb.Request) (*agentpb.Reply, error) {
			switch {
			case req.GetHello() != nil:
				return &agentpb.Reply{Result: &agentpb.Reply_Hello{Hello: &agentpb.HelloReply{Level: 2, Pid: 1}}}, nil
			case req.GetCreateTask() != nil:
				ct := req.GetCreateTask()
				if ct.Pids[len(ct.Pids)-1] == 7 {
					return nil, &ReplyError{Errno: unix.EEXIST, PIDs: ct.Pids, Msg: "clone3"}
				}
				return &agentpb.Reply{Result: &agentpb.Reply_Created{Created: &agentpb.Created{Pids: ct.Pids}}}, nil
			}
			return nil, nil
		})
	}()
	rep, err := p.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}})
	if err != nil || rep.GetHello().GetLevel() != 2 {
		t.Fatalf("hello: %v %v", rep, err)
	}
	rep, err = p.Call(&agentpb.Request{Op: &agentpb.Request_CreateTask{CreateTask: &agentpb.CreateTask{Pids: []int64{31000, 5}}}})
	if err != nil || len(rep.GetCreated().GetPids()) != 2 {
		t.Fatalf("create: %v %v", rep, err)
	}
	_, err = p.Call(&agentpb.Request{Op: &agentpb.Request_CreateTask{CreateTask: &agentpb.CreateTask{Pids: []int64{31001, 7}}}})
	var re *ReplyError
	if !errors.As(err, &re) || !errors.Is(err, unix.EEXIST) || len(re.PIDs) != 2 {
		t.Fatalf("failed reply: %v", err)
	}
	if _, err := p.Call(&agentpb.Request{Op: &agentpb.Request_Abort{Abort: &agentpb.Abort{}}}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

func TestProtocolVersionMismatch(t *testing.T) {
	p, c := pair(t)
	done := make(chan error, 1)
	go func() { done <- c.Serve(func(*agentpb.Request) (*agentpb.Reply, error) { return nil, nil }) }()
	b, _ := proto.Marshal(&agentpb.Envelope{Version: 99, Body: &agentpb.Envelope_Request{Request: &agentpb.Request{Id: 1}}})
	if _, err := p.f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrVersion) {
		t.Fatalf("serve: %v, want ErrVersion", err)
	}
	env, err := p.recv(time.Second)
	if err != nil || unix.Errno(env.GetReply().GetFailed().GetErrno()) != unix.EPROTO {
		t.Fatalf("reply to a wrong version: %v %v", env, err)
	}
}

func TestProtocolTimeoutAndPeer(t *testing.T) {
	p, _ := pair(t) // nobody serves
	p.Timeout = 50 * time.Millisecond
	if _, err := p.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	pf, cf, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	defer cf.Close()
	if _, err := NewConn(cf, os.Getppid()); !errors.Is(err, ErrPeer) {
		t.Fatalf("wrong peer accepted: %v", err)
	}
}
