package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"golang.org/x/sys/unix"
)

// Cgroup is a cgroup v2 directory that holds one test's processes. Freezing
// it is how a dump stops a tree that no one outside it shares, and killing
// it reaches every process started in it, orphans that left the tree
// included. The test's cleanup kills what is left and removes it.
type Cgroup struct {
	Dir string
	fd  int // open on Dir, for clone3's CLONE_INTO_CGROUP
}

// NewCgroup makes a cgroup under the cgroup v2 mount, named after prefix,
// with the cleanup registered on t. It fails when there is no cgroup v2
// mount or the cgroup cannot be made: the caller decides whether that
// skips the test or only changes how it runs.
func NewCgroup(t testing.TB, prefix string) (*Cgroup, error) {
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		return nil, fmt.Errorf("no cgroup v2 mount: %w", err)
	}
	d, err := os.MkdirTemp(mnt, prefix)
	if err != nil {
		return nil, fmt.Errorf("cannot make a cgroup: %w", err)
	}
	fd, err := unix.Open(d, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(d)
		return nil, err
	}
	cg := &Cgroup{Dir: d, fd: fd}
	t.Cleanup(func() { cg.remove(t) })
	return cg, nil
}

// Attach makes the processes started with a begin in the cgroup. A nil
// Cgroup (none could be made) leaves a as it is.
func (cg *Cgroup) Attach(a *syscall.SysProcAttr) {
	if cg != nil {
		a.UseCgroupFD, a.CgroupFD = true, cg.fd
	}
}

// Kill thaws the cgroup and kills every process in it; the caller reaps
// its own children. A nil Cgroup does nothing.
func (cg *Cgroup) Kill() {
	if cg != nil {
		os.WriteFile(filepath.Join(cg.Dir, "cgroup.freeze"), []byte("0"), 0)
		os.WriteFile(filepath.Join(cg.Dir, "cgroup.kill"), []byte("1"), 0)
	}
}

// remove kills what is left and removes the directory, which the kernel
// allows once the last process in it is gone (reaped by whoever its
// parent is: the wait is on that).
func (cg *Cgroup) remove(t testing.TB) {
	unix.Close(cg.fd)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		cg.Kill()
		if err := os.Remove(cg.Dir); err == nil || os.IsNotExist(err) {
			return
		}
	}
	t.Errorf("cgroup %s left behind", cg.Dir)
}
