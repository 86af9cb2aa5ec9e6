package agent

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/proto/agentpb"
	"golang.org/x/sys/unix"
)

// The restore service against hostile clients, on the real kernel: the
// service runs in this (root) test process, clients are real sockets and,
// for another uid, the real nsinit binary run as that uid.

func restoreRequest() *agentpb.Request {
	return &agentpb.Request{Op: &agentpb.Request_Restore{Restore: &agentpb.Restore{ImageDir: "/nonexistent"}}}
}

// listenHere starts the service on a fresh socket and returns its path.
func listenHere(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nsinit-listen")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	if err := Listen(sock, io.Discard); err != nil {
		t.Fatal(err)
	}
	return sock
}

func TestListenRefusesAbstractNames(t *testing.T) {
	for _, name := range []string{"@nsinit", "\x00nsinit", ""} {
		if err := Listen(name, io.Discard); !errors.Is(err, ErrAbstractSocket) {
			t.Errorf("Listen(%q): %v, want ErrAbstractSocket", name, err)
		}
	}
}

// TestRestoreServiceRefusesOtherUIDs: an administrator widened the socket
// (mode 0666), and uid 65534 asks for an image whose task is uid 0 and
// writes `id` to a file. The agent must refuse by uid, and the file must
// never appear.
func TestRestoreServiceRefusesOtherUIDs(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bin := testutil.Binary(t)
	sock := listenHere(t)
	if err := os.Chmod(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(filepath.Dir(sock), "img")
	proof := filepath.Join(filepath.Dir(sock), "proof")
	if err := os.Mkdir(img, 0o755); err != nil {
		t.Fatal(err)
	}
	// Not a valid image: the service must refuse before reading anything.
	if err := os.WriteFile(filepath.Join(img, "pstree.img"), []byte("sh -c 'id > "+proof+"'"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "restore", "--agent", sock, "-D", img)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uid 65534 may not use this restore socket") {
		t.Errorf("restore as uid 65534: %v\n%s", err, out)
	}
	if _, err := os.Stat(proof); err == nil {
		t.Errorf("the image ran for uid 65534")
	}
}

// TestRestoreServiceNeedsADirectoryDescriptor: a path alone (read with the
// agent's rights) is not enough, nor is a descriptor of something else.
func TestRestoreServiceNeedsADirectoryDescriptor(t *testing.T) {
	testutil.Require(t, testutil.Root)
	sock := listenHere(t)
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var re *ReplyError
	if _, err := c.Call(restoreRequest()); !errors.As(err, &re) || re.Errno != unix.EINVAL {
		t.Errorf("restore without a descriptor: %v, want EINVAL", err)
	}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := c.CallWithFD(restoreRequest(), int(f.Fd())); !errors.As(err, &re) || re.Errno != unix.ENOTDIR {
		t.Errorf("restore with a file's descriptor: %v, want ENOTDIR", err)
	}
}

// TestRestoreServiceBoundsClients: a client that sends nothing is dropped
// after the idle timeout, and connections past the cap are closed at once.
func TestRestoreServiceBoundsClients(t *testing.T) {
	testutil.Require(t, testutil.Root)
	defer func(d time.Duration, n int) { clientIdleTimeout, maxClients = d, n }(clientIdleTimeout, maxClients)
	clientIdleTimeout, maxClients = time.Hour, 2
	sock := listenHere(t)
	var held []*Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Each held client proves it holds a slot by getting an answer.
	for range maxClients {
		c, err := Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if _, err := c.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}}); err != nil {
			t.Fatalf("hello: %v", err)
		}
	}
	extra, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.Timeout = time.Minute
	if _, err := extra.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}}); err == nil || errors.Is(err, ErrTimeout) {
		t.Errorf("a client past the cap of %d: %v, want the connection closed", maxClients, err)
	}

	clientIdleTimeout = 100 * time.Millisecond
	for _, c := range held {
		c.Close()
	}
	held = nil
	idle, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := idle.recv(time.Minute); !errors.Is(err, io.EOF) {
		t.Errorf("an idle client: %v, want the connection closed (EOF)", err)
	}
}
