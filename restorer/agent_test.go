package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// TestRestoreAgent restores a namespace whose init was an nsinit agent:
// the init becomes nsinit again with its original command line, adopts its
// main child instead of starting its command, leaves the image's zombie
// child alone and, asked by the restorer over its control socket, puts the
// namespace's ns_last_pid back after its own runtime threads exist.
func TestRestoreAgent(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	b := newTB().ns(2, 1, 1)
	b.task(2, []int{21000, 1}, 0, []int{21000, 1}, []int{21000, 1}).Agent = true
	b.task(2, []int{21001, 2}, 21000, []int{21000, 1}, []int{21000, 1})
	z := b.task(2, []int{21002, 3}, 21000, []int{21000, 1}, []int{21000, 1})
	z.State, z.ExitStatus = pstree.Zombie, 7<<8
	b.tr.Namespaces[1].LastPID = 50
	tr := place(t, sleepers(&b.tr))
	tr.Tasks[0].Argv = []string{"nsinit", "-g", "--", "busybox", "sleep", "1000"}
	p, err := NewPlan(tr, Options{AgentExe: bin, Features: features})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Execute(p, ExecOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killTree(t, tr, res) })
	root := tr.Tasks[0].PID()
	// Its original command line, which it did not run again: it adopted
	// its restored child (2) and kept its zombie (3).
	b2, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", root))
	if got, want := string(b2), strings.Join(tr.Tasks[0].Argv, "\x00")+"\x00"; got != want {
		t.Errorf("agent cmdline %q, want %q", got, want)
	}
	time.Sleep(500 * time.Millisecond) // the agent settles; it would reap now if it wrongly did
	checkTree(t, tr, PayloadExec)
	// The next pid of the namespace is 51: a process entering it gets it.
	out, err := nsenter("-t", strconv.Itoa(root), "-p", "--", "/bin/busybox", "sh", "-c", "echo $$").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v %s", err, out)
	}
	// nsenter forks once inside the namespace; the shell is that child.
	// Runtime threads the agent starts after writing its cursor take the
	// pids right above it, as the original agent's did: a few at most.
	if got, _ := strconv.Atoi(strings.TrimSpace(string(out))); got < 51 || got > 51+16 {
		t.Errorf("next pid in the agent's namespace = %d, want 51 (+ a few agent threads)", got)
	}
}

// TestRestoreAgentFaults: an agent that dies or stops answering aborts the
// restore with an error that says so, and nothing of the tree is left.
// The agent's program is a script standing in for a broken nsinit. An
// agent that dies takes its namespace with it: the restorer may notice a
// member dying before it reaches the agent's socket.
func TestRestoreAgentFaults(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name, script, want string
	}{
		{"dies", "exit 3", "closed its socket|died before"},
		{"hangs", "exec /bin/busybox sleep 1000", "no answer within"},
		{"answers garbage", "printf 'not a protocol message' >&62; exec /bin/busybox sleep 1000", "decode"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The control socket is at fd 62 (agentconn.ControlFD).
			exe := filepath.Join(t.TempDir(), "broken-agent")
			if err := os.WriteFile(exe, []byte("#!/bin/busybox sh\n"+c.script+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			b := newTB().ns(2, 1, 1)
			b.task(2, []int{21000, 1}, 0, []int{21000, 1}, []int{21000, 1}).Agent = true
			b.task(2, []int{21001, 2}, 21000, []int{21000, 1}, []int{21000, 1})
			tr := place(t, sleepers(&b.tr))
			p, err := NewPlan(tr, Options{AgentExe: exe, Features: features})
			if err != nil {
				t.Fatal(err)
			}
			_, err = Execute(p, ExecOptions{AgentTimeout: time.Second, Attempts: 1})
			if err == nil || !regexp.MustCompile(c.want).MatchString(err.Error()) {
				t.Fatalf("restore with a broken agent: error %v, want one matching %q", err, c.want)
			}
			t.Logf("error: %v", err)
			assertGone(t, tr)
		})
	}
}
