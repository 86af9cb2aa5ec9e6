package bpf

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// waitEvents reads records until the in-kernel counter reaches want (the
// tasks run asynchronously from the shell that started them) and returns
// every record; it fails after a generous timeout.
// *total is the number received before; it is advanced by n.
func waitEvents(t *testing.T, w *Watcher, total *uint64, n uint64) []Event {
	t.Helper()
	want := *total + n
	var evs []Event
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := w.Counts()
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, drain(t, w)...)
		if c.Events >= want && *total+uint64(len(evs))+c.Dropped == c.Events {
			*total += uint64(len(evs))
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited for %d events, counter is %d, got: %v", want, c.Events, evs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// normalize writes events with the pids of levels >= 1 only (level-0 pids
// are not predictable) and the parent as its level-1 pid, so a test can list
// the exact events it expects: "fork 1 -> [4]", "exit [8 4 2] 0x500".
func normalize(evs []Event, level1 map[int]int) []string {
	for _, e := range evs {
		if e.Kind == Fork && len(e.Pids) > 1 {
			level1[e.Pids[0]] = e.Pids[1]
		}
	}
	var out []string
	for _, e := range evs {
		s := e.Kind.String()
		if e.Kind == Fork {
			s += fmt.Sprintf(" %d ->", level1[e.ParentTid])
		}
		s += fmt.Sprintf(" %v", e.Pids[1:])
		if e.ExitStatus != nil {
			s += fmt.Sprintf(" %#x", *e.ExitStatus)
		}
		if e.Comm != "busybox" {
			s += " comm=" + e.Comm
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func checkSet(t *testing.T, step string, got, want []string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: events differ\n got: %q\nwant: %q", step, got, want)
	}
}

// checkLive checks every fork event whose child still lives against /proc:
// its pid at every level, its process id and its parent.
func checkLive(t *testing.T, evs []Event) (checked int) {
	t.Helper()
	for _, e := range evs {
		if e.Kind != Fork {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.Pids[0]))
		if err != nil {
			continue // exited since
		}
		st := string(b)
		if testutil.Field(st, "State")[0] == 'Z' {
			continue
		}
		if got := nsPids(t, e.Pids[0]); !slices.Equal(got, e.Pids) {
			t.Errorf("%v: /proc NSpid is %v", e, got)
		}
		if got := testutil.Field(st, "Tgid"); got != strconv.Itoa(e.Tgid) {
			t.Errorf("%v: /proc Tgid is %s", e, got)
		}
		if got := testutil.Field(st, "PPid"); got != strconv.Itoa(e.ParentTgid) {
			t.Errorf("%v: /proc PPid is %s", e, got)
		}
		checked++
	}
	return checked
}

// TestEventsExactNested drives a tree across three nested pid namespaces
// below a watched one and checks that the records are exactly the forks,
// execs and exits (with their codes) that happened, with the pid at every
// level matching /proc, while a busy fork loop in an unwatched namespace
// runs beside it.
func TestEventsExactNested(t *testing.T) {
	w := loadWatcher(t)
	noise := startShell(t)
	noise.run("while :; do /bin/busybox true; done &")
	s := startShell(t)
	dir := t.TempDir()
	l2 := filepath.Join(dir, "l2.sh")
	l3 := filepath.Join(dir, "l3.sh")
	os.WriteFile(l2, []byte("/bin/busybox unshare -p -f /bin/busybox sh "+l3+" &\nwait\n"), 0o644)
	os.WriteFile(l3, []byte("/bin/busybox sh -c 'exit 5'\n/bin/busybox sleep 1000 &\nwait\n"), 0o644)

	if _, err := w.WatchNS(s.nsFD); err != nil {
		t.Fatal(err)
	}
	if err := w.Attach(); err != nil {
		t.Fatal(err)
	}
	level1 := map[int]int{s.cmd.Process.Pid: 1}
	var total uint64

	// Step 1: a child exits with a code.
	if out := s.run("/bin/busybox sh -c 'exit 3'"); len(out) != 0 {
		t.Fatalf("unexpected output %q", out)
	}
	evs := waitEvents(t, w, &total, 3)
	checkSet(t, "exit 3", normalize(evs, level1), []string{"fork 1 -> [2]", "exec [2]", "exit [2] 0x300"})

	// Step 2: a background child stays alive.
	if out := s.run("/bin/busybox sleep 1000 & echo $!"); !slices.Equal(out, []string{"3"}) {
		t.Fatalf("background pid: %q", out)
	}
	evs = waitEvents(t, w, &total, 2)
	checkSet(t, "background", normalize(evs, level1), []string{"fork 1 -> [3]", "exec [3]"})
	if n := checkLive(t, evs); n != 1 {
		t.Errorf("checked %d live tasks against /proc, want 1", n)
	}

	// Step 3: two more nested namespaces (levels 2 and 3), a child exiting
	// with a code at level 3 and a sleeper there.
	s.run("/bin/busybox unshare -p -f /bin/busybox sh " + l2 + " &")
	evs = waitEvents(t, w, &total, 13)
	checkSet(t, "nested", normalize(evs, level1), []string{
		"fork 1 -> [4]", "exec [4]", // unshare
		"fork 4 -> [5 1]", "exec [5 1]", // level-2 init: sh l2.sh
		"fork 5 -> [6 2]", "exec [6 2]", // unshare
		"fork 6 -> [7 3 1]", "exec [7 3 1]", // level-3 init: sh l3.sh
		"fork 7 -> [8 4 2]", "exec [8 4 2]", "exit [8 4 2] 0x500",
		"fork 7 -> [9 5 3]", "exec [9 5 3]", // sleep
	})
	if n := checkLive(t, evs); n != 5 {
		t.Errorf("checked %d live tasks against /proc, want 5", n)
	}
	var sleeper3, init2 int
	for _, e := range evs {
		if e.Kind == Fork && len(e.Pids) == 4 && e.Pids[3] == 3 {
			sleeper3 = e.Pids[0]
		}
		if e.Kind == Fork && len(e.Pids) == 3 && e.Pids[2] == 1 {
			init2 = e.Pids[0]
		}
	}

	// Watch the level-2 namespace too: its counter counts only what
	// happens in it and below.
	l2fd, err := syscall.Open(fmt.Sprintf("/proc/%d/ns/pid", init2), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(l2fd)
	l2ino, err := w.WatchNS(l2fd)
	if err != nil {
		t.Fatal(err)
	}

	// Step 4: kill the level-3 sleeper; the level-3 and level-2 inits and
	// the unshares above them exit in turn. Kill the level-1 sleeper too.
	syscall.Kill(sleeper3, syscall.SIGKILL)
	syscall.Kill(hostPid(t, s.inode, 3), syscall.SIGTERM)
	evs = waitEvents(t, w, &total, 6)
	checkSet(t, "exits", normalize(evs, level1), []string{
		"exit [9 5 3] 0x9", "exit [7 3 1] 0x0", "exit [6 2] 0x0", "exit [5 1] 0x0", "exit [4] 0x0",
		"exit [3] 0xf",
	})
	n2, err := w.NSEvents(l2ino)
	if err != nil {
		t.Fatal(err)
	}
	if n2 != 4 {
		t.Errorf("level-2 namespace counted %d events, want 4 (exits of [9 5 3] [7 3 1] [6 2] [5 1])", n2)
	}

	// The whole run: the level-1 counter saw exactly the records, nothing
	// from the busy unwatched namespace.
	c, err := w.Counts()
	if err != nil {
		t.Fatal(err)
	}
	n1, err := w.NSEvents(s.inode)
	if err != nil {
		t.Fatal(err)
	}
	if c.Events != total || n1 != total || c.Dropped != 0 {
		t.Errorf("counters: %+v, level-1 namespace %d, want %d records and no drops", c, n1, total)
	}
	if got := strings.Join(noise.run("echo alive"), ""); got != "alive" {
		t.Errorf("noise shell: %q", got)
	}
}
