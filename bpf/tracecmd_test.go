package bpf

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// TestTraceCommand runs the built `nsinit trace --json --ns` on a namespace,
// makes a child exit with a code there, and stops the tracer with SIGINT:
// it prints the fork, exec and exit as JSON lines and exits 0.
func TestTraceCommand(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF)
	bin := testutil.Binary(t)
	s := startShell(t)
	tr := exec.Command(bin, "trace", "--json", "--ns", fmt.Sprintf("/proc/%d/ns/pid", s.cmd.Process.Pid))
	out, _ := tr.StdoutPipe()
	var stderr strings.Builder
	tr.Stderr = &stderr
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if tr.ProcessState == nil {
			tr.Process.Kill()
			tr.Wait()
		}
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The tracer is attached once it reports the first event; until then,
	// make one again now and then.
	var got []Event
	for len(got) < 3 {
		s.run("/bin/busybox sh -c 'exit 6' &")
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("nsinit trace ended: %s", stderr.String())
				}
				var e Event
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("bad JSON line %q: %v", l, err)
				}
				got = append(got, e)
				if e.Kind == Exit {
					break read
				}
			case <-time.After(200 * time.Millisecond):
				break read
			}
		}
	}
	tr.Process.Signal(syscall.SIGINT)
	for l := range lines {
		t.Logf("after SIGINT: %s", l)
	}
	if err := tr.Wait(); err != nil {
		t.Fatalf("nsinit trace: %v: %s", err, stderr.String())
	}
	var kinds []string
	for _, e := range got[len(got)-3:] {
		kinds = append(kinds, e.Kind.String())
		if len(e.Pids) != 2 || e.NSInode != s.inode {
			t.Errorf("event %v: want 2 levels in namespace %d", e, s.inode)
		}
	}
	if !slices.Equal(kinds, []string{"fork", "exec", "exit"}) || *got[len(got)-1].ExitStatus != 0x600 {
		t.Errorf("events %v, want fork, exec, exit status 0x600", got)
	}
}

// TestTraceCommandText: without --json, `nsinit trace` spells exits as
// strace does: "exited 11", "killed by SIGKILL".
func TestTraceCommandText(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF)
	bin := testutil.Binary(t)
	s := startShell(t)
	tr := exec.Command(bin, "trace", "--ns", fmt.Sprintf("/proc/%d/ns/pid", s.cmd.Process.Pid))
	out, _ := tr.StdoutPipe()
	var stderr strings.Builder
	tr.Stderr = &stderr
	if err := tr.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		tr.Process.Kill()
		tr.Wait()
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// The tracer is attached once it reports an event: until both exits
	// have been seen, make them again whenever the tracer goes quiet (at
	// most 100 times: a tracer that never reports fails, not hangs).
	want := map[string]bool{" exited 11 comm=": false, " killed by SIGKILL comm=": false}
	seen := func() bool { return want[" exited 11 comm="] && want[" killed by SIGKILL comm="] }
	for try := 0; !seen(); try++ {
		if try == 100 {
			t.Fatalf("no exit lines from nsinit trace: %v", want)
		}
		s.run("/bin/busybox sh -c 'exit 11' & /bin/busybox sh -c 'kill -KILL $$' & wait")
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("nsinit trace ended: %s", stderr.String())
				}
				if strings.Contains(l, "status 0x") {
					t.Errorf("raw status in text output: %s", l)
				}
				for w := range want {
					if strings.HasPrefix(l, "exit ") && strings.Contains(l, w) {
						want[w] = true
					}
				}
			case <-time.After(200 * time.Millisecond):
				break read
			}
		}
	}
}
