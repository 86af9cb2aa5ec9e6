package bpf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

const busybox = "/bin/busybox"

// shell is a busybox sh that is PID 1 of a new pid namespace, driven line
// by line through its stdin; its stdout is read back line by line.
type shell struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	nsFD  int    // open fd of its pid namespace
	inode uint32 // that namespace's inode number
}

func needBusybox(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("needs %s (apt-get install busybox-static)", busybox)
	}
}

// startShell starts `busybox sh -s` as PID 1 of a new pid namespace. It is
// killed (and with it everything in its namespace) and reaped at cleanup.
func startShell(t testing.TB) *shell {
	t.Helper()
	needBusybox(t)
	cmd := exec.Command(busybox, "sh", "-s")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start busybox sh in a new pid namespace: %v", err)
	}
	s := &shell{t: t, cmd: cmd, in: in, out: bufio.NewReader(out), nsFD: -1}
	t.Cleanup(s.kill)
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open pid namespace of %d: %v", cmd.Process.Pid, err)
	}
	s.nsFD = fd
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	s.inode = uint32(st.Ino)
	// Wait until the shell reads its input: its own exec is over (the exec
	// event fires after os/exec's Start has returned).
	s.run(":")
	return s
}

func (s *shell) kill() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.in.Close()
		s.cmd.Wait()
	}
	if s.nsFD >= 0 {
		unix.Close(s.nsFD)
		s.nsFD = -1
	}
}

// run sends one line of shell and waits until the shell has run it, by
// having it echo a marker after it; it returns what the line printed.
func (s *shell) run(line string) []string {
	s.t.Helper()
	const mark = "--done--"
	if _, err := fmt.Fprintf(s.in, "%s\necho %s\n", line, mark); err != nil {
		s.t.Fatalf("write to shell: %v", err)
	}
	var lines []string
	for {
		l, err := s.out.ReadString('\n')
		if err != nil {
			s.t.Fatalf("read from shell after %q: %v (got %q)", line, err, lines)
		}
		l = strings.TrimSuffix(l, "\n")
		if l == mark {
			return lines
		}
		lines = append(lines, l)
	}
}

// nsPids is the NSpid line of a live task, outermost first.
func nsPids(t testing.TB, pid int) []int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	var pids []int
	for _, f := range strings.Fields(testutil.Field(string(b), "NSpid")) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("NSpid of %d: %v", pid, err)
		}
		pids = append(pids, n)
	}
	return pids
}

// hostPid finds the level-0 pid of the task whose pid in the pid namespace
// with inode ns is inner.
func hostPid(t testing.TB, ns uint32, inner int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", pid), &st) != nil || uint32(st.Ino) != ns {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(testutil.Field(string(b), "NSpid"))
		if len(f) > 0 && f[len(f)-1] == strconv.Itoa(inner) {
			return pid
		}
	}
	t.Fatalf("no task with pid %d in pid namespace %d", inner, ns)
	return 0
}

// drain reads every record pending in the ring buffer.
func drain(t testing.TB, w *Watcher) []Event {
	t.Helper()
	var evs []Event
	for {
		e, err := w.Read(time.Now())
		if err == ErrNoEvent {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
}

func loadWatcher(t testing.TB) *Watcher {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.BPF)
	w, err := Load()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}
