package restorer

import (
	"os"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestExecPayloadFDs: an exec payload starts with exactly the restorer's
// fds that are not close-on-exec - an inheritable one opened for the test
// among them - and none of the pidfds and other fds the restore opened
// (builder_linux.go, privateFDs; exec_fds.go).
func TestExecPayloadFDs(t *testing.T) {
	needRoot(t)
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY, 0) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	want := inheritableFDs(t)
	if !slices.Contains(want, fd) {
		t.Fatalf("fd %d is not among the inheritable fds %v", fd, want)
	}
	tr := simpleTree(freeBase(t, 24000, 8))
	if _, _, err := restore(t, tr, PayloadExec); err != nil {
		t.Fatal(err)
	}
	for _, tk := range tr.Tasks {
		got := fdsOf(t, "/proc/"+strconv.Itoa(tk.PID())+"/fd")
		if !slices.Equal(got, want) {
			t.Errorf("task %d has fds %v, want the restorer's inheritable %v", tk.PID(), got, want)
		}
	}
}

// inheritableFDs lists this process's fds without close-on-exec.
func inheritableFDs(t *testing.T) []int {
	var v []int
	for _, fd := range fdsOf(t, "/proc/self/fd") {
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && fl&unix.FD_CLOEXEC == 0 {
			v = append(v, fd)
		}
	}
	return v
}

// fdsOf lists the fd numbers in dir (a /proc/PID/fd), sorted.
func fdsOf(t *testing.T, dir string) []int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var v []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			v = append(v, n)
		}
	}
	slices.Sort(v)
	return v
}
