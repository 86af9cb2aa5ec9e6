package kernelfacts

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	// f52c: born through setns in a child namespace; forks T (f52t), says
	// T's host pid and exits once T is ready to outlive it.
	roles["f52c"] = func(args []string) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return fail("pipe: %v", err)
		}
		c, err := spawn(spawnOpts{fds: []int{3, 4, p[1]}, argv: []string{"f52t"}})
		if err != nil {
			return fail("T: %v", err)
		}
		unix.Close(p[1])
		var b [1]byte
		if n, _ := unix.Read(p[0], b[:]); n != 1 {
			return fail("T did not start")
		}
		say("f52 %d", fdinfoNSpid(c.pidfd)[0])
		return 0
	}
	// f52t: drops the parent-death signal spawn gives every child (it is
	// to outlive its parent), tells its parent on fd 5, then acts as pause.
	roles["f52t"] = func(args []string) int {
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, 0, 0, 0, 0); err != nil {
			return fail("prctl: %v", err)
		}
		os.NewFile(5, "parent").Write([]byte{1})
		return roles["pause"](args)
	}
}

// TestF5_2OrphansGoToTheInitOfTheDyingTasksNamespace: C, born through
// setns in namespace N (its parent, the test, is outside N and a child
// subreaper), forks T and exits. T is re-parented to N's init, not to the
// subreaper above C: the kernel looks for a reaper among the dying task's
// ancestors in its own namespace only, then takes that namespace's init.
// T was born in C's session and group, which it keeps: the test's, whose
// leaders read as 0 inside N (F3.1).
func TestF5_2OrphansGoToTheInitOfTheDyingTasksNamespace(t *testing.T) {
	needRoot(t)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	i := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "pause")
	init := atoi(i.want("ready")[1])
	type res struct {
		c   *helper
		err error
	}
	done := make(chan res)
	go func() {
		runtime.LockOSThread()
		own, _ := unix.Open("/proc/thread-self/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		defer unix.Close(own)
		var r res
		if r.err = setnsPid(fmt.Sprintf("/proc/%d/ns/pid", init)); r.err == nil {
			r.c, r.err = start(t, spawnOpts{}, "f52c")
			if unix.Setns(own, unix.CLONE_NEWPID) == nil {
				runtime.UnlockOSThread()
			}
		} else {
			runtime.UnlockOSThread()
		}
		done <- r
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	c := r.c
	tHost := atoi(c.want("f52")[0])
	if ready := c.want("ready"); len(ready) != 3 || ready[0] == "1" || ready[1] != strconv.Itoa(tHost) {
		t.Fatalf("T reports getpid, NSpid %v: want [p %d p] in N", ready, tHost)
	}
	// C exits by itself; reap it without closing the control pipe T shares.
	if st, err := reap(c.proc); err != nil || st.ExitStatus() != 0 {
		t.Fatalf("C: %v %v", st, err)
	}
	c.done = true
	if pp := strings.Join(nsLine(tHost, "PPid"), ""); pp != strconv.Itoa(init) {
		t.Errorf("T's parent after C died: %s, want N's init %d (the test, %d, is a subreaper above C)", pp, init, os.Getpid())
	}
	sid, _ := unix.Getsid(0)
	if got, want := strings.Join(nsLine(tHost, "NSsid"), " "), fmt.Sprintf("%d 0", sid); got != want {
		t.Errorf("T's NSsid %q, want %q (C's session)", got, want)
	}
	if got, want := strings.Join(nsLine(tHost, "NSpgid"), " "), fmt.Sprintf("%d 0", unix.Getpgrp()); got != want {
		t.Errorf("T's NSpgid %q, want %q (C's group)", got, want)
	}
	c.ctl.Close() // T exits
	c.rep.Close()
	i.stop()
}
