package agent_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// startPiped starts cmd with pipes on its stdin, stdout and stderr.
func startPiped(t *testing.T, cmd *exec.Cmd) (stdin io.WriteCloser, stdout, stderr *bufio.Reader) {
	t.Helper()
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errp, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return in, bufio.NewReader(out), bufio.NewReader(errp)
}

func readLine(t *testing.T, r *bufio.Reader, what string) string {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading %s: %v (got %q)", what, err, l)
	}
	return strings.TrimSuffix(l, "\n")
}

// TestWarnOnReap: with -w, nsinit prints tini's "Reaped zombie process
// with pid=N" for an orphan it reaps; at verbosity 0 (TINI_VERBOSITY=0)
// it does not.
func TestWarnOnReap(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	for _, quiet := range []bool{false, true} {
		t.Run(fmt.Sprintf("quiet=%v", quiet), func(t *testing.T) {
			// The orphan prints its pid and exits; the command waits for
			// the test on its stdin.
			cmd := exec.Command(testutil.Binary(t), "-w", "--", bb, "sh", "-c",
				fmt.Sprintf(`(%s sh -c 'echo $$' &); read x; exit 0`, bb))
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if quiet {
				cmd.Env = append(os.Environ(), "TINI_VERBOSITY=0")
			}
			stdin, stdout, stderr := startPiped(t, cmd)
			orphan, err := strconv.Atoi(readLine(t, stdout, "the orphan's pid"))
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("nsinit: Reaped zombie process with pid=%d", orphan)
			if !quiet {
				for l := readLine(t, stderr, want); l != want; l = readLine(t, stderr, want) {
					t.Logf("stderr: %s", l)
				}
			} else {
				waitFor(t, "nsinit to reap the orphan", hangBound, func() bool {
					_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
					return err != nil
				})
			}
			stdin.Close()
			rest, _ := io.ReadAll(stderr)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("nsinit: %v\n%s", err, rest)
			}
			if strings.Contains(string(rest), "Reaped zombie") {
				t.Errorf("unexpected warning:\n%s", rest)
			}
		})
	}
}

// TestTiniEnvironment: tini's variables and nsinit's names for them set
// -s and -g; NSINIT_VERBOSITY=2 prints the configuration.
func TestTiniEnvironment(t *testing.T) {
	testutil.Require(t, testutil.Root)
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"NSINIT_VERBOSITY=2"}, "subreaper false, signals to the process group false"},
		{[]string{"NSINIT_VERBOSITY=2", "TINI_SUBREAPER=", "TINI_KILL_PROCESS_GROUP=1"}, "subreaper true, signals to the process group true"},
		{[]string{"TINI_VERBOSITY=2", "NSINIT_SUBREAPER=1", "NSINIT_KILL_PROCESS_GROUP=1"}, "subreaper true, signals to the process group true"},
		{[]string{"TINI_VERBOSITY=1", "NSINIT_KILL_PROCESS_GROUP=1"}, ""},
	} {
		cmd := nsinitCmd(t, "--", busybox(t), "true") // PID 1: subreaper only when asked
		cmd.Env = append(os.Environ(), tc.env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", tc.env, err, out)
		}
		if tc.want == "" && len(out) != 0 || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: output %q, want %q", tc.env, out, tc.want)
		}
	}
}

// TestGraceStop: with --grace, a SIGTERM that ends the command also ends
// what it left behind: descendants get SIGTERM once the command has exited
// (and act on it), those that ignore it get SIGKILL after the grace
// period, and nsinit exits with the command's status as soon as all are
// gone. nsinit runs as a subreaper here, not PID 1, whose exit would kill
// them anyway.
func TestGraceStop(t *testing.T) {
	testutil.Require(t, testutil.Root)
	bb := busybox(t)
	for _, stubborn := range []bool{false, true} {
		t.Run(fmt.Sprintf("stubborn=%v", stubborn), func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "marker")
			// The descendant: a shell with a sleep child, which on SIGTERM
			// writes the marker and exits - or ignores SIGTERM.
			trap := fmt.Sprintf(`trap "echo term > %s; exit 0" TERM`, marker)
			grace := "1h" // a polite descendant must not make nsinit wait for it
			if stubborn {
				trap, grace = `trap "" TERM`, "100ms"
			}
			inner := fmt.Sprintf(`%s; %s sleep 1000 & echo $$ $!; wait`, trap, bb)
			cmd := exec.Command(testutil.Binary(t), "--grace", grace, "--", bb, "sh", "-c",
				fmt.Sprintf(`trap "exit 7" TERM; %s sh -c '%s' & wait`, bb, inner))
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			_, stdout, stderr := startPiped(t, cmd)
			var pid, sleeper int
			if _, err := fmt.Sscan(readLine(t, stdout, "the descendant's pids"), &pid, &sleeper); err != nil {
				t.Fatal(err)
			}
			// The sleep must have exec'd: a SIGTERM between its fork and
			// its exec runs the shell's trap in the child, which the exec
			// then forgets, and the sleep would wait out the grace.
			for i := 0; ; i++ {
				b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sleeper))
				if strings.Contains(string(b), "sleep\x001000") {
					break
				}
				if i == 60000 {
					t.Fatalf("pid %d never became the sleep: %q", sleeper, b)
				}
				time.Sleep(time.Millisecond)
			}
			// Its trap is set: stop nsinit.
			cmd.Process.Signal(syscall.SIGTERM)
			msgs, _ := io.ReadAll(stderr)
			if st := runStatusStarted(t, cmd, 5*time.Minute); st != 7 {
				t.Errorf("nsinit exited %d, want the command's 7\n%s", st, msgs)
			}
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Errorf("descendant %d outlived nsinit", pid)
			}
			b, _ := os.ReadFile(marker)
			if got := strings.TrimSpace(string(b)); got != map[bool]string{false: "term", true: ""}[stubborn] {
				t.Errorf("marker %q: the descendant did not end as it should", got)
			}
			if stubborn != strings.Contains(string(msgs), "SIGKILL") {
				t.Errorf("stderr: %q", msgs)
			}
		})
	}
}
