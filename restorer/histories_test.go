package restorer

import (
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
)

// historySeeds run in the regular test: together their histories make
// every operation of testdata/histories.c's table succeed at least once
// (each seed's log ends with the operations the kernel accepted), and
// 15, 20, 146 and 184 are tasks that changed user namespace after creating
// children or through an intermediate one (user namespace stages,
// planner_userstage.go); 44 has user namespaces no task is in whose maps
// the dump reads through a joiner (F8.7), 201 a map written from a parent
// its writer later leaves and builders that switched ids (switchedIDs);
// 1, 57 and 214 need user namespace keepers (planner_keepers.go): a map
// writer whose parent nobody made (1), a user stand-in cloning from a
// namespace nobody made (57), joiners of namespaces every member had left
// (214, which plans twice).
// NSINIT_HISTORY_SEEDS=N runs seeds 1..N instead (A-B: seeds A..B), and
// NSINIT_HISTORY_SEED=S seed S alone.
var historySeeds = []int64{1, 2, 5, 15, 20, 22, 26, 37, 44, 56, 57, 71, 90, 94, 95, 103, 107, 108, 113, 122, 124, 125, 146, 155, 177, 184, 198, 201, 214}

// wedgingSeeds are seeds whose history leaves a task the kernel never
// lets go (Linux 6.18: an init held in zap_pid_ns_processes, unkillable
// until the machine reboots; docs/restore.md, "Random kernel histories").
// A range run skips them so that it does not wedge the machine it runs on.
var wedgingSeeds = map[int64]string{
	204: "its dump leaves an init stuck in zap_pid_ns_processes",
}

// historiesBin builds testdata/histories.c into a directory every uid can
// read: the exec payload runs it again as the ids of each restored task.
func historiesBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NSINIT_TEST_HISTORIES"); p != "" {
		return p
	}
	dir := testutil.SharedTempDir(t, "nsinit-histories-", 0o755)
	bin := filepath.Join(dir, "histories")
	if out, err := exec.Command("cc", "-O2", "-static", "-Wall", "-pthread", "-o", bin, "testdata/histories.c").CombinedOutput(); err != nil {
		t.Fatalf("building testdata/histories.c (needs cc and a static libc): %v\n%s", err, out)
	}
	return bin
}

// TestHistories runs random kernel histories (testdata/histories.c): the
// tree each leaves is dumped with `nsinit dump --kill`, restored in both
// placements (one payload each, alternating by seed), and compared with
// the record through /proc after each, then checked with `nsinit check`.
// A refused restore is a failure: whatever a history made, the kernel
// allowed.
func TestHistories(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	seeds, err := historySeedsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	bin := historiesBin(t)
	for _, seed := range seeds {
		t.Run(strconv.FormatInt(seed, 10), func(t *testing.T) { history(t, bin, seed) })
	}
}

func historySeedsFromEnv() ([]int64, error) {
	if s := os.Getenv("NSINIT_HISTORY_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("NSINIT_HISTORY_SEED: %v", err)
		}
		return []int64{n}, nil
	}
	s := os.Getenv("NSINIT_HISTORY_SEEDS")
	if s == "" {
		return historySeeds, nil
	}
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		from, to = "1", s
	}
	a, err1 := strconv.ParseInt(from, 10, 64)
	b, err2 := strconv.ParseInt(to, 10, 64)
	if err1 != nil || err2 != nil || a > b {
		return nil, fmt.Errorf("NSINIT_HISTORY_SEEDS=%q: want N or A-B", s)
	}
	var seeds []int64
	for n := a; n <= b; n++ {
		seeds = append(seeds, n)
	}
	return seeds, nil
}

// history runs one seed: the history, its record, dump --kill, then a
// restore, a comparison and a kill per placement.
func history(t *testing.T, bin string, seed int64) {
	if why, ok := wedgingSeeds[seed]; ok {
		t.Skipf("seed %d is not run: %s", seed, why)
	}
	dir := testutil.SharedTempDir(t, "nsinit-history-", 0o755)
	logPath := filepath.Join(dir, "log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("history of seed %d:\n%s", seed, b)
		}
	})
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	ev, evw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	// Two seeds in three put the tree in a cgroup of its own (the dump
	// freezes it there); the others make the dump fall back to ptrace.
	var orig *testutil.Cgroup
	if seed%3 != 0 {
		orig = newRTCgroup(t)
	}
	cmd := exec.Command(bin, strconv.FormatInt(seed, 10), filepath.Join(dir, "ready"))
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{evw} // fd 3: the ready event
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	orig.Attach(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	evw.Close()
	root := cmd.Process.Pid
	t.Cleanup(func() { rtKill(t, root, orig) })
	// One byte when every task is in place; EOF if the root died first.
	got := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := ev.Read(b)
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the history ended without its ready event: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no ready event after 60s") // a guard only: a history takes well under a second
	}
	// Settled by construction: every task parked or stopped, every dead
	// one a zombie or reaped, before the event.
	before, err := rtView(root)
	if err != nil {
		t.Fatalf("reading the tree: %v", err)
	}
	img := rtDumpKill(t, cmd, dir, before)
	for i, placement := range []string{"set_tid", "ns_last_pid"} {
		payload := []string{"exec", "stopped"}[(int(seed%2)+i)%2]
		if !historyRestore(t, img, root, before, placement, payload) {
			return
		}
	}
}

// historyRestore restores img in placement and payload, compares the tree
// with before, checks it, and kills it. It says whether the next restore
// may go on (the pids are free again).
func historyRestore(t *testing.T, img string, root int, before map[int]*rtTask, placement, payload string) bool {
	rest := newRTCgroup(t)
	t.Cleanup(func() { rtKill(t, root, rest) })
	args := []string{"restore", "-D", img, "-d", "--placement", placement, "--payload", payload}
	what := placement + "/" + payload
	if out, err := rtRun(t, rest, args...); err != nil {
		if strings.Contains(out, "pid already taken") {
			t.Skipf("%s: host busy: %s", what, strings.TrimSpace(out))
		}
		if !strings.Contains(out, "plan: ") { // a refused plan says all there is
			plan, _ := rtRun(t, nil, "restore", "-D", img, "--dry-run", "--placement", placement, "--payload", payload)
			out += "\nplan:\n" + plan
		}
		t.Fatalf("FINDING %s: restore failed: %v\n%s", what, err, out)
	}
	stopped := payload == "stopped"
	after, err := rtSettle(root, len(before), 10*time.Second)
	if err != nil {
		after, _ = rtView(root)
		t.Errorf("FINDING %s: restored tree does not settle: %v", what, err)
	}
	for _, d := range rtCompare(before, after, stopped) {
		t.Errorf("FINDING %s: %s", what, d)
	}
	if out, err := rtRun(t, nil, "check", "-t", strconv.Itoa(root), "-D", img); err != nil {
		if left := historyCheckFindings(rtCheckFindings(out, stopped), before, root, stopped); len(left) > 0 || !strings.Contains(err.Error(), "exit status 1") {
			t.Errorf("FINDING %s: nsinit check: %v\n%s", what, err, strings.Join(left, "\n"))
		}
	}
	rtKill(t, root, rest)
	if err := rtGone(before); err != nil {
		t.Fatalf("%s: after the kill: %v", what, err)
	}
	return !t.Failed()
}

// historyCheckFindings drops the capability findings of the exec payload
// for the processes of a history that never exec'd: the root, which drives
// it, and those with threads, which park as they are. The others park as a
// program of their own, so an exec gave them their capabilities as the
// exec payload does; a task that never exec'd since its clone into a user
// namespace has every capability there whatever its ids, and running its
// program again computes them from its ids.
func historyCheckFindings(left []string, before map[int]*rtTask, root int, stopped bool) []string {
	if stopped {
		return left
	}
	var keep []string
	for _, l := range left {
		var pid int
		var what string
		if n, _ := fmt.Sscanf(l, "pid %d: %s", &pid, &what); n == 2 && strings.HasPrefix(what, "cap_") {
			if tk := before[pid]; pid == root || (tk != nil && len(tk.Threads) > 0) {
				continue
			}
		}
		keep = append(keep, l)
	}
	return keep
}
