package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestE2EWaitersAreNotRunAgain: a shell at `wait` and `unshare -f` (and the
// shell it started as PID 1 of a new namespace, also at `wait`) are
// recorded as waiting for their children. Restored with the exec payload,
// they wait again instead of running their programs from the start, which
// would launch every child a second time: after the restore /proc shows the
// same processes with the same pids, parents, groups, sessions, states,
// command lines and thread counts as before the dump, and nothing else.
// Once its children are gone a waiter exits.
func TestE2EWaitersAreNotRunAgain(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	bb := "/bin/busybox"
	script := fmt.Sprintf(`%[1]s sh -c "%[1]s sleep 1001 & %[1]s sleep 1002 & wait" & `+
		`%[1]s unshare -f -p %[1]s sh -c "%[1]s sleep 1003 & wait" & exec %[1]s sleep 1000`, bb)
	cmd := exec.Command(bb, "sh", "-c", script)
	startScriptTree(t, cmd)
	root := cmd.Process.Pid
	// pids, parents, groups, sessions, state, command line, threads
	view := func() []string {
		var out []string
		for _, p := range subtree(root) {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
			if err != nil {
				continue
			}
			argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			s := string(st)
			state, _, _ := strings.Cut(procfs.StatusField([]byte(s), "State"), " ")
			out = append(out, strings.Join([]string{procfs.StatusField([]byte(s), "NSpid"), procfs.StatusField([]byte(s), "PPid"),
				procfs.StatusField([]byte(s), "NSpgid"), procfs.StatusField([]byte(s), "NSsid"), state, procfs.StatusField([]byte(s), "Threads"),
				strings.ReplaceAll(string(argv), "\x00", " ")}, " | "))
		}
		slices.Sort(out)
		return out
	}
	settled := func(v []string) bool { // every process exec'd and asleep
		return len(v) == 7 && !slices.ContainsFunc(v, func(l string) bool { return !strings.Contains(l, " | S | ") })
	}
	var before []string
	for i := 0; i < 300 && (!settled(before) || findArgv(root, bb+" sleep 1003") == 0 || findArgv(root, bb+" sleep 1000") != root); i++ {
		time.Sleep(10 * time.Millisecond)
		before = view()
	}
	if len(before) != 7 {
		t.Fatalf("the tree did not form: %q", before)
	}
	tr, img := dumpKilled(t, cmd)
	var waiting []string
	for _, tk := range tr.Tasks {
		if tk.WaitsForChildren {
			waiting = append(waiting, tk.Argv[1])
		}
	}
	if slices.Sort(waiting); !slices.Equal(waiting, []string{"sh", "sh", "unshare"}) {
		t.Fatalf("tasks recorded as waiting for children: %q, want the two shells and unshare", waiting)
	}
	waitGone(t, tr)
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	if out, err := nsinit(t, "restore", "-D", img, "-d"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond) // a program run again would have launched its children by now
	if after := view(); !slices.Equal(before, after) {
		t.Errorf("/proc before the dump and after the restore differ:\n%s\n---\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if out, err := nsinit(t, "check", "-t", strconv.Itoa(root), "-D", img); err != nil {
		t.Errorf("check: %v\n%s", err, out)
	}
	// The shell waiting for sleep 1001 and 1002 exits once they are gone:
	// it becomes a zombie of the root, which never reaps.
	sh := 0
	for _, p := range subtree(root) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); strings.Contains(string(b), "sleep 1001 &") && !strings.Contains(string(b), "unshare") {
			sh = p
		}
	}
	unix.Kill(findArgv(root, bb+" sleep 1001"), unix.SIGKILL)
	unix.Kill(findArgv(root, bb+" sleep 1002"), unix.SIGKILL)
	var st string
	for i := 0; i < 300 && st != "Z"; i++ {
		time.Sleep(10 * time.Millisecond)
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", sh))
		st = string(procfs.StatState(b))
	}
	if st != "Z" {
		t.Errorf("the restored waiting shell (pid %d) is %q after its children died, want a zombie", sh, st)
	}
}
