package dump

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// fakeGuard stands for the eBPF guard: it runs onArm when armed and
// reports moved at every Disarm.
type fakeGuard struct {
	arms  int
	onArm func(pids []int)
	moved []string
}

func (g *fakeGuard) Arm(pids []int, _ []int) error {
	g.arms++
	if g.onArm != nil {
		g.onArm(pids)
	}
	return nil
}

func (g *fakeGuard) Disarm() ([]string, error) { return g.moved, nil }

// startBusy starts shells at two pid levels that run busybox true in a
// loop, in a session and process group of their own, killed at cleanup.
func startBusy(t *testing.T) *testTree {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create pid namespaces")
	}
	cmd := exec.Command("/bin/busybox", "sh", "-c", `
while :; do busybox true; done &
unshare -fp busybox sh -c "while :; do busybox true; done" &
wait`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tt := &testTree{cmd: cmd, root: cmd.Process.Pid}
	t.Cleanup(func() {
		unix.Kill(-tt.root, unix.SIGKILL)
		tt.cleanup(t)
	})
	// Built once a task is at level 1 (a live read of a busy tree fails
	// now and then: a task goes while being read).
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if tr, err := ReadLive(tt.root, ""); err == nil && slices.ContainsFunc(tr.Tasks, func(t pstree.Task) bool { return t.Level() == 1 }) {
			return tt
		}
		if time.Now().After(deadline) {
			t.Fatal("the busy tree never reached pid level 1")
		}
	}
}

// TestGuardArmedAfterFreeze: the guard is armed only once the freeze is
// complete: when Arm is called, every task and thread of a busy tree
// (forking and exiting all the time) is in its tracing stop or a zombie.
// Then the dump goes through on its first attempt.
func TestGuardArmedAfterFreeze(t *testing.T) {
	tt := startBusy(t)
	r := procfs.New("")
	g := &fakeGuard{}
	g.onArm = func(pids []int) {
		if len(pids) < 4 { // root, its loop, unshare, the init of level 1
			t.Errorf("armed with %d pids: %v", len(pids), pids)
		}
		for _, pid := range pids {
			tids, err := r.Tasks(pid)
			if err != nil {
				t.Errorf("pid %d at Arm: %v", pid, err)
				continue
			}
			for _, tid := range tids {
				st, err := r.TaskStatus(pid, tid)
				if err != nil || (st.State != 't' && st.State != 'Z') {
					t.Errorf("pid %d thread %d at Arm: state %c, err %v", pid, tid, st.State, err)
				}
			}
		}
	}
	for i := range 5 {
		g.arms = 0
		tr, err := Dump(tt.root, Options{Guard: g})
		if err != nil {
			t.Fatalf("dump %d: %v", i, err)
		}
		if g.arms != 1 || !tr.Checked {
			t.Errorf("dump %d: %d attempts, checked %v", i, g.arms, tr.Checked)
		}
	}
}

// TestDumpRefusesNamingMoves: a guard that sees movement at every attempt
// makes the dump retry, then refuse naming what moved, and the tree is let
// go (not left stopped, not traced) although LeaveStopped was asked.
func TestDumpRefusesNamingMoves(t *testing.T) {
	tt := startTree(t, `busybox sleep 1000 & exec busybox sleep 1000`, 2, false)
	g := &fakeGuard{moved: []string{"exit 4242 [4242 7] status 0x0 comm=ghost"}}
	_, err := Dump(tt.root, Options{Guard: g, Retries: 2, LeaveStopped: true})
	if !errors.Is(err, ErrRaced) || !strings.Contains(fmt.Sprint(err), "exit 4242") {
		t.Fatalf("got %v, want ErrRaced naming exit 4242", err)
	}
	if g.arms != 3 {
		t.Errorf("%d attempts, want 3", g.arms)
	}
	s, err := procfs.New("").Status(tt.root)
	if err != nil || s.TracerPid != 0 || s.State == 'T' || s.State == 't' {
		t.Errorf("root after a refused dump: state %c tracer %d, err %v", s.State, s.TracerPid, err)
	}
}

// closingGuard is a fakeGuard that counts its Close calls.
type closingGuard struct {
	fakeGuard
	closed int
}

func (g *closingGuard) Close() error { g.closed++; return nil }

// TestLoadGuard: a guard made by Options.LoadGuard (loaded beside the
// discovery and the freeze) is armed once the freeze is complete, like one
// given ready, makes the dump checked, and is closed by Dump; one that
// cannot be made ends the dump with ErrNoGuard and the tree runs again.
func TestLoadGuard(t *testing.T) {
	tt := startBusy(t)
	r := procfs.New("")
	g := &closingGuard{}
	g.onArm = func(pids []int) {
		for _, pid := range pids {
			st, err := r.Status(pid)
			if err != nil || (st.State != 't' && st.State != 'Z') {
				t.Errorf("pid %d at Arm: state %c, err %v", pid, st.State, err)
			}
		}
	}
	loads := 0
	tr, err := Dump(tt.root, Options{LoadGuard: func() (Guard, error) { loads++; return g, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Checked || g.arms != 1 || loads != 1 || g.closed != 1 {
		t.Errorf("checked %v, %d arms, %d loads, closed %d times; want true, 1, 1, 1", tr.Checked, g.arms, loads, g.closed)
	}

	noBPF := errors.New("no BTF here")
	_, err = Dump(tt.root, Options{LoadGuard: func() (Guard, error) { return nil, noBPF }})
	if !errors.Is(err, ErrNoGuard) || !errors.Is(err, noBPF) {
		t.Fatalf("got %v, want ErrNoGuard wrapping the load's error", err)
	}
	s, err := r.Status(tt.root)
	if err != nil || s.TracerPid != 0 || s.State == 'T' || s.State == 't' {
		t.Errorf("root after a dump without its guard: state %c tracer %d, err %v", s.State, s.TracerPid, err)
	}
}

// TestGuardNamespaces: the guard gets exactly the pid namespaces whose init
// is in the tree, as reading every member's status tells them, although
// guardNamespaces reads status only until it finds each namespace's init.
func TestGuardNamespaces(t *testing.T) {
	tt := startTree(t, bigScript, bigTasks, false)
	r := procfs.New("")
	members, err := findMembers(r, tt.root)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]bool{}
	for _, m := range members {
		s, err := r.Status(m.pid)
		if err != nil {
			t.Fatal(err)
		}
		if s.NSpid[len(s.NSpid)-1] == 1 {
			ino, err := r.NSInode(m.pid, "pid")
			if err != nil {
				t.Fatal(err)
			}
			want[ino] = true
		}
	}
	if len(want) < 3 {
		t.Fatalf("the tree has %d pid namespace inits, want at least 3", len(want))
	}
	fds, err := guardNamespaces(r, members)
	defer closeAll(fds)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]bool{}
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		if got[st.Ino] {
			t.Errorf("namespace %d opened twice", st.Ino)
		}
		got[st.Ino] = true
	}
	if !maps.Equal(got, want) {
		t.Errorf("guard namespaces %v, want %v", got, want)
	}
}
