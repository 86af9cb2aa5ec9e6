package agent_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// helperBin is the C test helper (testdata/helper.c), built once by TestMain.
var helperBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nsinit-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helperBin = filepath.Join(dir, "helper")
	if p := os.Getenv("NSINIT_TEST_HELPER"); p != "" {
		// Built on the host by vm-test: the test VM has no compiler.
		helperBin = p
	} else if out, err := exec.Command("cc", "-O2", "-static", "-Wall", "-o", helperBin, "testdata/helper.c").CombinedOutput(); err != nil {
		// Tests that need it fail with this message; pure tests still run.
		helperBin = ""
		fmt.Fprintf(os.Stderr, "building testdata/helper.c: %v\n%s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func helper(t *testing.T) string {
	t.Helper()
	if helperBin == "" {
		t.Fatal("the C test helper did not build (needs cc and a static libc: apt-get install gcc libc6-dev)")
	}
	return helperBin
}

// busybox is the shell the tests give nsinit as a command.
func busybox(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox not found (apt-get install busybox-static)")
	}
	return p
}

// nsinitCmd runs nsinit with args as PID 1 of a new pid namespace.
func nsinitCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(testutil.Binary(t), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// runStatus runs cmd to completion within a deadline and returns its exit
// status; a hang fails the test instead of hanging the suite.
// hangBound is how long the tests wait for an event before they call it a
// hang: far beyond what any event takes, so that only a hang reaches it on
// a machine loaded to a load average of hundreds.
const hangBound = 2 * time.Minute

func runStatus(t *testing.T, cmd *exec.Cmd, deadline time.Duration) int {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		t.Fatal(err)
	case <-time.After(deadline):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not exit within %v", cmd.Args, deadline)
	}
	return -1
}

func TestExitCodes(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	for code := 0; code <= 255; code++ {
		st := runStatus(t, nsinitCmd(t, "--", bb, "sh", "-c", "exit "+strconv.Itoa(code)), hangBound)
		if st != code {
			t.Errorf("command exit %d: nsinit exited %d", code, st)
		}
	}
}

func TestSignalDeaths(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGKILL, syscall.SIGSEGV,
		syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGABRT, 40, 64} {
		// The shell kills itself; by default it would exit with the status
		// of the signal the kernel gives its exec'd process.
		script := fmt.Sprintf("trap - %d; kill -%d $$; sleep 5", sig, sig)
		st := runStatus(t, nsinitCmd(t, "--", bb, "sh", "-c", script), hangBound)
		if want := 128 + int(sig); st != want {
			t.Errorf("command killed by %v: nsinit exited %d, want %d", sig, st, want)
		}
	}
}

func TestStartFailures(t *testing.T) {
	testutil.Require(t, testutil.Root)
	notExec := filepath.Join(t.TempDir(), "plain-file")
	os.WriteFile(notExec, []byte("data"), 0o644)
	for _, c := range []struct {
		args []string
		want int
		msg  string
	}{
		{[]string{"--", "/nonexistent/cmd"}, 127, "no such file"},
		{[]string{"--", "no-such-command-in-path"}, 127, "not found"},
		{[]string{"--", notExec}, 126, "permission denied"},
		{[]string{}, 2, "no command"},
		{[]string{"-e", "3", "--", busybox(t), "sh", "-c", "exit 3"}, 0, ""},
		{[]string{"-e", "3", "--", busybox(t), "sh", "-c", "exit 4"}, 4, ""},
	} {
		cmd := nsinitCmd(t, c.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		st := runStatus(t, cmd, hangBound)
		if st != c.want || !strings.Contains(stderr.String(), c.msg) {
			t.Errorf("nsinit %v: status %d, stderr %q; want %d and %q", c.args, st, stderr.String(), c.want, c.msg)
		}
	}
}

// waitFor polls cond every 10ms until it holds or the deadline passes.
func waitFor(t *testing.T, what string, deadline time.Duration, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(deadline); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", deadline, what)
}

// TestSignalForwarding sends nsinit every forwardable signal, one at a time,
// and checks that the command receives each exactly once, sent by nsinit
// (si_pid 1 in the namespace), and nothing else, also while idle.
func TestSignalForwarding(t *testing.T) {
	testutil.Require(t, testutil.Root)
	for _, group := range []bool{false, true} {
		t.Run(fmt.Sprintf("group=%v", group), func(t *testing.T) {
			log := filepath.Join(t.TempDir(), "signals")
			args := []string{"--", helper(t), "record", log}
			if group {
				args = append([]string{"-g"}, args...)
			}
			cmd := nsinitCmd(t, args...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			lines := func() []string {
				b, _ := os.ReadFile(log)
				return strings.Split(strings.TrimSpace(string(b)), "\n")
			}
			waitFor(t, "the recorder to start", hangBound, func() bool { return lines()[0] == "ready 0" })

			var want []string
			want = append(want, "ready 0")
			for s := syscall.Signal(1); s <= 64; s++ {
				switch s {
				case syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGCHLD:
					continue // never forwarded: see agent/signals.go
				}
				if err := cmd.Process.Signal(s); err != nil {
					t.Fatal(err)
				}
				line := fmt.Sprintf("%d 1", s)
				want = append(want, line)
				waitFor(t, fmt.Sprintf("signal %d to arrive", s), hangBound, func() bool {
					return len(lines()) >= len(want)
				})
			}
			// Idle: nothing unsolicited (such as the runtime's SIGURG).
			time.Sleep(500 * time.Millisecond)
			if got := lines(); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("command received:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// TestInheritedSignalState starts nsinit with signals blocked and ignored
// and checks that the command starts with the same mask and dispositions,
// not the Go runtime's.
func TestInheritedSignalState(t *testing.T) {
	testutil.Require(t, testutil.Root)
	const blocked, ignored = "0000000000010a00", "0000000000001002" // USR1 USR2 ALRM | INT PIPE
	out, err := exec.Command(helper(t), "exec-with", blocked, ignored, testutil.Binary(t), "--",
		busybox(t), "cat", "/proc/self/status").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.Field(string(out), "SigBlk"); got != blocked {
		t.Errorf("command's SigBlk = %s, want %s", got, blocked)
	}
	if got := testutil.Field(string(out), "SigIgn"); got != ignored {
		t.Errorf("command's SigIgn = %s, want %s", got, ignored)
	}
}

// nsTasks lists the tasks (level-0 pids) whose pid namespace is nsLink.
func nsTasks(nsLink string) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || l != nsLink {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		out[pid] = testutil.Field(string(b), "State")
	}
	return out
}

func zombies(tasks map[int]string) int {
	n := 0
	for _, st := range tasks {
		if strings.HasPrefix(st, "Z") {
			n++
		}
	}
	return n
}

// TestOrphansReaped double-forks orphans into nsinit's namespace and checks
// that none is left a zombie, for 200 orphans dying one by one and for a
// burst of 10,000 zombies handed over at once.
func TestOrphansReaped(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	for _, c := range []struct {
		name, script string
		orphans      int
	}{
		{"200-double-forked", "for i in $(seq 200); do (sleep 0.$((i % 5)) &) ; done", 200},
		{"burst-10000", helper(t) + " burst 10000", 10000},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The command makes the orphans, then says so in a file and
			// stays alive: nsinit must reap them while it supervises.
			marker := filepath.Join(t.TempDir(), "made")
			cmd := nsinitCmd(t, "--", bb, "sh", "-c", c.script+"; echo > "+marker+"; exec sleep 1000")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			nsLink, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid))
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the orphans to be made", 60*time.Second, func() bool {
				_, err := os.Stat(marker)
				return err == nil
			})
			// Done when only nsinit and the final sleep are left, and
			// neither is a zombie.
			waitFor(t, "every orphan to be reaped", 60*time.Second, func() bool {
				tasks := nsTasks(nsLink)
				return len(tasks) == 2 && zombies(tasks) == 0
			})
			// The namespace handed out pids for every orphan (nsinit is 1,
			// the shell 2): proof they existed in it.
			if last := lastPID(t, cmd.Process.Pid); last < c.orphans {
				t.Errorf("namespace's last pid is %d: fewer than %d orphans were made", last, c.orphans)
			}
		})
	}
}

// lastPID reads ns_last_pid of the pid namespace whose init is pid, from
// inside it (the only place the cursor can be read).
func lastPID(t *testing.T, initPID int) int {
	t.Helper()
	bb := busybox(t)
	out, err := exec.Command(bb, "nsenter", "-t", strconv.Itoa(initPID), "-p", "--",
		bb, "cat", "/proc/sys/kernel/ns_last_pid").Output()
	if err == nil {
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return n
	}
	t.Fatalf("read ns_last_pid: %v", err)
	return 0
}

// TestSubreaper runs nsinit outside PID 1: orphans of the command must come
// back to it (it makes itself a child subreaper) and be reaped.
func TestSubreaper(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	pidFile := filepath.Join(t.TempDir(), "orphan")
	cmd := exec.Command(testutil.Binary(t), "--", bb, "sh", "-c",
		fmt.Sprintf("(%s sleep 1000 & echo $! > %s); exec %s sleep 1000", bb, pidFile, bb))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var orphan int
	waitFor(t, "the orphan's pid", hangBound, func() bool {
		b, _ := os.ReadFile(pidFile)
		orphan, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return orphan > 0
	})
	defer syscall.Kill(orphan, syscall.SIGKILL)
	status := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", orphan))
		return string(b)
	}
	waitFor(t, "the orphan to be re-parented to nsinit", hangBound, func() bool {
		return testutil.Field(status(), "PPid") == strconv.Itoa(cmd.Process.Pid)
	})
	syscall.Kill(orphan, syscall.SIGKILL)
	waitFor(t, "nsinit to reap the orphan", hangBound, func() bool { return status() == "" })
	// SIGTERM is forwarded to the command, which dies of it: 128+15.
	cmd.Process.Signal(syscall.SIGTERM)
	if st := runStatusStarted(t, cmd, hangBound); st != 143 {
		t.Errorf("nsinit exited %d after SIGTERM, want 143", st)
	}
}

func runStatusStarted(t *testing.T, cmd *exec.Cmd, deadline time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(deadline):
		cmd.Process.Kill()
		<-done
		t.Fatalf("nsinit did not exit within %v", deadline)
	}
	return -1
}

// TestSimultaneousExit makes the command and its child exit at the same
// moment, many times: a lost SIGCHLD wake-up would hang nsinit.
func TestSimultaneousExit(t *testing.T) {
	testutil.Require(t, testutil.Root)
	for i := 0; i < 300; i++ {
		if st := runStatus(t, nsinitCmd(t, "--", helper(t), "together", "5"), hangBound); st != 5 {
			t.Fatalf("round %d: nsinit exited %d, want 5", i, st)
		}
	}
}

// TestParentDeathSignal: with -p TERM, nsinit gets SIGTERM when its parent
// dies, forwards it, and the command dies of it.
func TestParentDeathSignal(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	pidFile := filepath.Join(t.TempDir(), "nsinit.pid")
	// The shell starts nsinit in the background, records its pid and exits
	// once nsinit has started its command (it sets the parent-death signal
	// before): a parent that dies earlier, before any of nsinit's code
	// runs, leaves nothing for the kernel to signal (as with tini).
	sh := exec.Command(bb, "sh", "-c", fmt.Sprintf("%s -p TERM -- %s sleep 1000 & p=$!; echo $p > %s; "+
		`until [ -n "$(cat /proc/$p/task/*/children 2>/dev/null)" ]; do :; done`,
		testutil.Binary(t), bb, pidFile))
	if err := sh.Run(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(pidFile)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		t.Fatal("no nsinit pid")
	}
	defer func() { // on failure: nsinit and its command, which would outlive the test
		for _, p := range testutil.Descendants(pid) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}()
	waitFor(t, "nsinit to exit after its parent died", hangBound, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		return err != nil || strings.HasPrefix(testutil.Field(string(b), "State"), "Z")
	})
}

// TestForegroundTerminal: when stdin is nsinit's controlling terminal, the
// command gets its own process group and that group becomes the terminal's
// foreground group, as a shell does for a foreground job.
func TestForegroundTerminal(t *testing.T) {
	testutil.Require(t, testutil.Root)
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	cmd := exec.Command(testutil.Binary(t), "--", busybox(t), "sh", "-c", "echo pid=$$; exec sleep 1000")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var out []byte
	var child int
	buf := make([]byte, 256)
	waitFor(t, "the command to print its pid", hangBound, func() bool {
		master.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		k, _ := master.Read(buf)
		out = append(out, buf[:k]...)
		_, after, ok := strings.Cut(string(out), "pid=")
		if f := strings.Fields(after); ok && len(f) > 0 {
			child, _ = strconv.Atoi(f[0])
		}
		return child > 0
	})
	if child == cmd.Process.Pid {
		t.Fatalf("the command is nsinit itself (pid %d)", child)
	}
	waitFor(t, fmt.Sprintf("the command's group %d to be in the foreground", child), hangBound, func() bool {
		pg, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPGRP)
		return err == nil && pg == child
	})
}
