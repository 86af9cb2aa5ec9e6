package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/proto/agentpb"
	"github.com/nsinit/nsinit/pstree"
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
	dir := testutil.SharedTempDir(t, "nsinit-listen", 0o755)
	sock := filepath.Join(dir, "agent.sock")
	if err := Listen(sock, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	return sock
}

func TestListenRefusesAbstractNames(t *testing.T) {
	for _, name := range []string{"@nsinit", "\x00nsinit", ""} {
		if err := Listen(name, nil, io.Discard); !errors.Is(err, ErrAbstractSocket) {
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
	var re *agentconn.ReplyError
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
	var held []*agentconn.Conn
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
	if _, err := extra.Call(&agentpb.Request{Op: &agentpb.Request_Hello{Hello: &agentpb.Hello{}}}); err == nil || errors.Is(err, agentconn.ErrTimeout) {
		t.Errorf("a client past the cap of %d: %v, want the connection closed", maxClients, err)
	}

	clientIdleTimeout = 100 * time.Millisecond
	for _, c := range held {
		c.Close()
	}
	held = nil
	idle, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := idle.Read(make([]byte, 64)); !errors.Is(err, io.EOF) {
		t.Errorf("an idle client: %v, want the connection closed (EOF)", err)
	}
}

// TestRestoreServiceOtherUIDWithItsRights: an agent run with --listen-uid
// 1000 serves uid 1000 with uid 1000's rights only. Its own task (uid 1000,
// busybox sleep) is restored at the image's pid with no capability left;
// an image whose task is uid 0 and would write `id` to a file is refused
// by the kernel, and the file never appears.
func TestRestoreServiceOtherUIDWithItsRights(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bin := testutil.Binary(t)
	defer func(f func() (string, error)) { restorerExe = f }(restorerExe)
	restorerExe = func() (string, error) { return bin, nil }
	dir := testutil.SharedTempDir(t, "nsinit-listen", 0o755)
	sock := filepath.Join(dir, "agent.sock")
	if err := Listen(sock, []uint32{1000}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	asUser := func(args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	proof := filepath.Join(dir, "proof")
	for _, tc := range []struct {
		name string
		uid  uint32
		argv []string
	}{
		{"own", 1000, []string{"sleep", "1000"}},
		{"root", 0, []string{"sh", "-c", "id > " + proof}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A free pid can be taken before the restore reaches it by any
			// process of a busy machine; the restore then refuses it and
			// the test draws another.
			var pid int
			var out string
			var err error
			for try := 0; try < 3 && (try == 0 || strings.Contains(out, "pid already taken")); try++ {
				pid = freeHostPID(t)
				img := filepath.Join(dir, fmt.Sprintf("%s-%d", tc.name, try))
				writeImage(t, img, flatTask(pid, tc.uid, tc.argv))
				out, err = asUser("restore", "--agent", sock, "-D", img)
			}
			t.Logf("uid 1000 restores a uid-%d task: %v %s", tc.uid, err, out)
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			defer unix.Kill(pid, unix.SIGKILL)
			if tc.uid != 1000 {
				if err == nil || !strings.Contains(out, "operation not permitted") {
					t.Errorf("uid 1000 restoring a uid-0 task: %v\n%s", err, out)
				}
				if _, err := os.Stat(proof); err == nil {
					t.Errorf("the uid-0 task ran for uid 1000")
				}
				if len(status) > 0 && strings.Contains(string(status), "busybox") {
					t.Errorf("pid %d left behind: %s", pid, status)
				}
				return
			}
			if err != nil || strings.TrimSpace(out) != strconv.Itoa(pid) {
				t.Fatalf("uid 1000 restoring its own task: %v\n%s", err, out)
			}
			for key, want := range map[string]string{
				"Uid": "1000 1000 1000 1000", "Gid": "1000 1000 1000 1000",
				"CapInh": "0000000000000000", "CapPrm": "0000000000000000",
				"CapEff": "0000000000000000", "CapAmb": "0000000000000000",
			} {
				if got := testutil.Field(string(status), key); got != want {
					t.Errorf("restored task %d: %s %q, want %q", pid, key, got, want)
				}
			}
		})
	}
}

// flatTask is an image of one task at host pid with uid's ids running
// busybox argv.
func flatTask(pid int, uid uint32, argv []string) *pstree.Tree {
	full := testutil.FullCapSet()
	tk := pstree.Task{PIDs: []int{pid}, SIDs: []int{pid}, PGIDs: []int{pid},
		Exe: "/bin/busybox", Argv: argv, Cwd: "/",
		Creds: pstree.Creds{UID: uid, EUID: uid, SUID: uid, FSUID: uid,
			GID: uid, EGID: uid, SGID: uid, FSGID: uid, CapBnd: full}}
	if uid == 0 {
		tk.Creds.CapPrm, tk.Creds.CapEff = full, full
	}
	tk.NS[pstree.PidNS] = 1
	return &pstree.Tree{
		Namespaces: []pstree.Namespace{{ID: 1, Kind: pstree.PidNS}},
		Tasks:      []pstree.Task{tk},
	}
}

func writeImage(t *testing.T, dir string, tr *pstree.Tree) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "pstree.img"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// freeHostPID is a host pid nobody holds, well above the cursor (the
// processes the test starts next take the pids right above it).
func freeHostPID(t *testing.T) int {
	t.Helper()
	cur, _ := procfs.ReadLastPID()
	for p := range 2000 {
		pid := 20000 + (cur+3000+p*7)%12000
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return pid
		}
	}
	t.Skip("no free host pid")
	return 0
}

// TestReadPidfileRefusesTraps: the pidfile lives in a directory a restore
// for another uid owns; a FIFO, a symlink or an endless file there is
// refused at once, not read or waited on.
func TestReadPidfileRefusesTraps(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("1234\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid, err := readPidfile(good); err != nil || pid != 1234 {
		t.Errorf("a plain pidfile: %d %v", pid, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, link, "/dev/zero"} {
		if pid, err := readPidfile(p); err == nil {
			t.Errorf("%s read as pid %d", p, pid)
		}
	}
}
