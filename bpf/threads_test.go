package bpf

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tasks lists the tids of a process, from /proc.
func tasks(t *testing.T, pid int) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		m[n] = true
	}
	return m
}

func minus(a, b map[int]bool) []int {
	var d []int
	for k := range a {
		if !b[k] {
			d = append(d, k)
		}
	}
	slices.Sort(d)
	return d
}

// settle drains records until the counter stops moving, checks each with
// check, and returns the net change they describe: the level-0 tids forked
// and not exited (born), exited and not forked (died). A thread that came
// and went within the phase is in neither, as it is in no /proc snapshot.
func settle(t *testing.T, w *Watcher, check func(Event)) (born, died []int) {
	t.Helper()
	forked, exited := map[int]bool{}, map[int]bool{}
	var last uint64
	for stable := 0; stable < 3; {
		time.Sleep(20 * time.Millisecond)
		for _, e := range drain(t, w) {
			check(e)
			switch e.Kind {
			case Fork:
				forked[e.Pids[0]] = true
			case Exit:
				exited[e.Pids[0]] = true
			default:
				t.Errorf("unexpected %v", e)
			}
		}
		c, err := w.Counts()
		if err != nil {
			t.Fatal(err)
		}
		if c.Events == last {
			stable++
		} else {
			stable, last = 0, c.Events
		}
	}
	return minus(forked, exited), minus(exited, forked)
}

// checkPhase compares the net change the records describe with what
// /proc/PID/task shows between two snapshots.
func checkPhase(t *testing.T, phase string, born, died []int, before, after map[int]bool) {
	t.Helper()
	if want := minus(after, before); !slices.Equal(born, want) {
		t.Errorf("%s: threads forked %v, /proc shows new threads %v", phase, born, want)
	}
	if want := minus(before, after); !slices.Equal(died, want) {
		t.Errorf("%s: threads exited %v, /proc shows ended threads %v", phase, died, want)
	}
}

// TestThreads: threads are tasks. A thread created in a watched namespace
// is a fork event with Thread set, and every thread's exit is an exit
// event; what they describe equals what /proc/PID/task shows appearing and
// vanishing. The child is a Go program, whose runtime may add threads of
// its own at any time: the check is against /proc, not against the count
// the child asked for.
func TestThreads(t *testing.T) {
	w := loadWatcher(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=threads")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	out := bufio.NewScanner(stdout)
	say := func(line string) string {
		t.Helper()
		fmt.Fprintln(stdin, line)
		if !out.Scan() {
			t.Fatalf("child: no answer to %q", line)
		}
		return out.Text()
	}
	if !out.Scan() || out.Text() != "ready" {
		t.Fatal("child did not start")
	}
	pid := cmd.Process.Pid
	fd, err := syscall.Open(fmt.Sprintf("/proc/%d/ns/pid", pid), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := w.WatchNS(fd); err != nil {
		t.Fatal(err)
	}
	if err := w.Attach(); err != nil {
		t.Fatal(err)
	}
	threadOf := func(e Event) {
		if !e.Thread || e.Tgid != pid || len(e.Pids) != 2 || e.Kind == Fork && e.ParentTgid != pid {
			t.Errorf("%v (tgid %d ppid %d): want a thread of %d at level 1", e, e.Tgid, e.ParentTgid, pid)
		}
	}

	// Threads appear.
	before := tasks(t, pid)
	var inner []int
	for _, f := range strings.Fields(say("spawn 3")) {
		n, _ := strconv.Atoi(f)
		inner = append(inner, n)
	}
	innerSeen := map[int]bool{}
	born, died := settle(t, w, func(e Event) {
		threadOf(e)
		if e.Kind == Fork {
			innerSeen[e.Pids[1]] = true
		}
	})
	after := tasks(t, pid)
	checkPhase(t, "spawn", born, died, before, after)
	for _, n := range inner {
		if !innerSeen[n] {
			t.Errorf("thread %d (level 1) the child created has no fork event", n)
		}
	}

	// Those threads end.
	if say("end") != "ok" {
		t.Fatal("end")
	}
	for deadline := time.Now().Add(10 * time.Second); len(minus(after, tasks(t, pid))) < len(inner); {
		if time.Now().After(deadline) {
			t.Fatal("threads did not end")
		}
		time.Sleep(10 * time.Millisecond)
	}
	innerEnded := map[int]bool{}
	born, died = settle(t, w, func(e Event) {
		threadOf(e)
		if e.Kind == Exit {
			if e.GroupDead || *e.ExitStatus != 0 {
				t.Errorf("thread exit: %v group_dead=%v", e, e.GroupDead)
			}
			innerEnded[e.Pids[1]] = true
		}
	})
	now := tasks(t, pid)
	checkPhase(t, "end", born, died, after, now)
	for _, n := range inner {
		if !innerEnded[n] {
			t.Errorf("thread %d (level 1) the child ended has no exit event", n)
		}
	}

	// The process exits: every remaining thread is an exit with its status,
	// the last one ends the group.
	fmt.Fprintln(stdin, "exit 7")
	cmd.Wait()
	groupDead := 0
	born, died = settle(t, w, func(e Event) {
		if e.Kind == Exit && *e.ExitStatus != 0x700 {
			t.Errorf("exit: %v, want status 0x700", e)
		}
		if e.GroupDead {
			groupDead++
		}
	})
	checkPhase(t, "exit", born, died, now, map[int]bool{})
	if groupDead != 1 {
		t.Errorf("%d exits end the group, want 1", groupDead)
	}
}

// TestDropsAreCounted: with no reader, a burst larger than the ring buffer
// drops records but never counts: received + dropped == counted, exactly.
func TestDropsAreCounted(t *testing.T) {
	w := loadWatcher(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=churn")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	if !bufio.NewScanner(out).Scan() {
		t.Fatal("child did not start")
	}
	fd, err := syscall.Open(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := w.WatchNS(fd); err != nil {
		t.Fatal(err)
	}
	if err := w.Attach(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(in, "5000") // ~10,000 events of 192 bytes: more than 256 KiB
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	w.Detach()
	received := uint64(len(drain(t, w)))
	c, err := w.Counts()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counted %d, received %d, dropped %d", c.Events, received, c.Dropped)
	if c.Dropped == 0 || received+c.Dropped != c.Events || c.Events < 10000 {
		t.Errorf("counted %d, received %d, dropped %d: want drops and received + dropped == counted", c.Events, received, c.Dropped)
	}
}
