package dump

import (
	"fmt"
	"runtime"
	"syscall"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// A user namespace that no task of the tree is in (reached only as the
// parent of another user namespace or as the owner of a namespace, through
// NS_GET_PARENT or NS_GET_USERNS) has no /proc/PID/uid_map to read: the
// kernel shows a user namespace's maps only through its members. Its maps
// still matter to a restore: whatever was created inside it was created by
// ids it maps. So the dump makes a member for a moment: a raw fork that
// joins the namespace with setns through the nsfs fd the ioctl gave and
// exits at once. Its zombie's uid_map, gid_map and setgroups files show the
// namespace's, in the dumper's terms like every other member's
// (docs/kernel.md F8.7); the zombie is reaped afterwards.

// memberlessMaps reads the maps and the setgroups setting of the user
// namespace held by fd, which no task of the tree is in and which is not
// the dumper's own (setns into one's own user namespace is EINVAL).
func memberlessMaps(r *procfs.Reader, fd int) (uids, gids []procfs.IDMapEntry, setgroups bool, err error) {
	pid, err := joinUserNS(fd)
	if err != nil {
		return nil, nil, false, fmt.Errorf("join it for its maps: %w", err)
	}
	defer reap(pid)
	if uids, err = r.IDMap(pid, "uid_map"); err == nil {
		if gids, err = r.IDMap(pid, "gid_map"); err == nil {
			setgroups, err = r.SetgroupsAllowed(pid)
		}
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("maps through joiner %d: %w", pid, err)
	}
	return uids, gids, setgroups, nil
}

// joinUserNS forks a child that joins user namespace fd and exits, and
// waits (leaving it a zombie) until it has. It returns the child's pid; the
// caller reaps it.
func joinUserNS(fd int) (int, error) {
	// The child must not run a Go signal handler: signals stay blocked
	// on this thread (and so in the child) across the fork.
	runtime.LockOSThread()
	saved := sys.BlockAllSignals()
	pid, errno := forkJoiner(fd)
	sys.RestoreSignals(saved)
	runtime.UnlockOSThread()
	if errno != 0 {
		return 0, fmt.Errorf("fork: %w", errno)
	}
	ws, err := waitNoReap(pid)
	if err != nil {
		reap(pid)
		return 0, err
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		reap(pid)
		if ws.Exited() {
			return 0, fmt.Errorf("setns: %w", syscall.Errno(ws.ExitStatus()))
		}
		return 0, fmt.Errorf("joiner %d: %v", pid, ws)
	}
	return pid, nil
}

// waitNoReap waits for child pid to exit and leaves it a zombie.
func waitNoReap(pid int) (unix.WaitStatus, error) {
	pfd, err := sys.PidfdOpen(pid)
	if err != nil {
		return 0, err
	}
	defer pfd.Close()
	for {
		_, ws, err := sys.WaitPidfd(pfd.Int(), unix.WNOWAIT)
		if err != unix.EINTR {
			return ws, err
		}
	}
}

// reap reaps child pid.
func reap(pid int) {
	var ws syscall.WaitStatus
	for {
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != syscall.EINTR {
			return
		}
	}
}

// forkJoiner forks the joiner. The child runs on a copy of this
// goroutine's stack with one thread (setns into a user namespace wants a
// single-threaded caller with an fs_struct of its own, which a plain fork
// gives) and no scheduler: raw system calls only. Its exit status is the
// errno of the setns, 0 when it joined.
//
//go:nosplit
//go:norace
func forkJoiner(fd int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	if r != 0 {
		return int(r), 0
	}
	_, _, e = syscall.RawSyscall(unix.SYS_SETNS, uintptr(fd), uintptr(unix.CLONE_NEWUSER), 0)
	for {
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, uintptr(e), 0, 0)
	}
}
