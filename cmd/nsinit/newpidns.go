package main

// restore --into-new-pidns: the image's level 0 becomes a new pid namespace
// whose PID 1 is nsinit, so that every pid of the image, at every level, is
// exact relative to it, whatever the host's pids are. Two processes:
//
//	host (nsinit restore --into-new-pidns)
//	 └─ nsinit __pidns-restore   PID 1 of the new namespace N, in a private
//	     │                        mount namespace with N's own /proc
//	     ├─ nsinit restore -d    the ordinary restorer, inside N: N is its
//	     │                        level 0, its host cursor is N's
//	     └─ the restored root     adopted by PID 1 once the restorer exits
//
// PID 1 then stays N's init (agent.Run with the root adopted): it reaps
// orphans, forwards signals to the root and exits with the root's status.
// It tells the host the root through a pidfd sent over a socket, which the
// host turns into a host pid (fdinfo) for -d and --pidfile.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/earlyinit"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/supervise"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/restorer"
	"golang.org/x/sys/unix"
)

func init() {
	registerHidden("__pidns-restore", runPidnsRestore)
}

// Descriptors the host hands to PID 1 of the new namespace, and PID 1 on
// to the restorer (only the image directory).
const (
	newnsDirFD    = 3 // the image directory
	newnsReportFD = 4 // SOCK_SEQPACKET: PID 1 sends the root's pidfd
)

// errNewPidnsImage refuses an image that cannot go into a new namespace.
var errNewPidnsImage = fmt.Errorf("image cannot be restored into a new pid namespace: %w", restorer.ErrUnsupported)

// checkNewPidnsImage refuses, before anything is created, an image whose
// level 0 names pid 1: that pid is nsinit's in the new namespace (restore
// such a tree from the namespace above the one whose init it was).
func checkNewPidnsImage(tr *pstree.Tree) error {
	for _, p := range levelZeroPIDs(tr) {
		if p == 1 {
			return fmt.Errorf("%w: pid 1 at level 0 belongs to nsinit there (dump the tree from the pid namespace above it)", errNewPidnsImage)
		}
	}
	return nil
}

// levelZeroPIDs lists every level-0 pid the image names: tasks, threads,
// sessions and groups (a leader outside the tree still holds its pid).
func levelZeroPIDs(tr *pstree.Tree) []int {
	var ps []int
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		ps = append(ps, t.PIDs[0])
		if len(t.SIDs) > 0 && t.SIDs[0] > 0 {
			ps = append(ps, t.SIDs[0])
		}
		if len(t.PGIDs) > 0 && t.PGIDs[0] > 0 {
			ps = append(ps, t.PGIDs[0])
		}
		for _, th := range t.Threads {
			ps = append(ps, th.TIDs[0])
		}
	}
	return ps
}

// restoreIntoNewPidns runs on the host: it starts PID 1 of a new pid
// namespace, which restores the image inside, and either waits for the
// root's exit (its status is ours) or, with detach, prints the root's host
// pid once the tree is up and leaves the namespace running.
func restoreIntoNewPidns(dir string, restoreArgs []string, detach bool, pidfile string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "nsinit restore: "+format+"\n", a...)
		return exitFailure
	}
	tr, err := imagefile.Read(dir)
	if err == nil {
		err = checkNewPidnsImage(tr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return exitStatus(err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fail("%v", err)
	}
	dirf, err := os.OpenFile(abs, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fail("%v", err)
	}
	defer dirf.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("report socket: %v", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "report"), os.NewFile(uintptr(fds[1]), "report")
	defer ours.Close()
	mode := "--attached"
	if detach {
		mode = "--detached"
	}
	init := exec.Command("/proc/self/exe", append([]string{"__pidns-restore", mode, "--"}, restoreArgs...)...)
	init.Stdin, init.Stdout, init.Stderr = os.Stdin, os.Stdout, os.Stderr
	init.ExtraFiles = []*os.File{dirf, theirs} // newnsDirFD, newnsReportFD
	init.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS}
	// Signals for the tree go to its init, which hands them on.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := init.Start(); err != nil {
		return fail("start the new pid namespace: %v", err)
	}
	theirs.Close()
	go func() {
		for s := range sigs {
			_ = init.Process.Signal(s)
		}
	}()
	root, rerr := receiveRoot(ours)
	if rerr != nil {
		// PID 1 says why on stderr; its status is the restore's.
		code := waitExit(init)
		if code == 0 {
			code = exitFailure
		}
		return code
	}
	if detach {
		init.Process.Release()
		if err := writePidfile(pidfile, root); err != nil {
			return fail("%v", err)
		}
		fmt.Println(root)
		return 0
	}
	if err := writePidfile(pidfile, root); err != nil {
		return fail("%v", err)
	}
	return waitExit(init)
}

// receiveRoot reads the root's pidfd from PID 1 and returns the root's pid
// as this process's procfs numbers it.
func receiveRoot(c *os.File) (int, error) {
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(c.Fd()), buf, oob, 0)
	if err != nil {
		return 0, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return 0, fmt.Errorf("no root from the new namespace's init")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return 0, fmt.Errorf("no root from the new namespace's init")
	}
	defer unix.Close(fds[0])
	nspid, err := sys.FdinfoNSpid(fds[0])
	if err != nil || len(nspid) == 0 {
		return 0, fmt.Errorf("root's pid: %v", err)
	}
	return nspid[0], nil
}

// waitExit waits for cmd and returns its status as a shell reports it.
func waitExit(cmd *exec.Cmd) int {
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			return supervise.ShellStatus(ws)
		}
		return ee.ExitCode()
	}
	if err != nil {
		return exitFailure
	}
	return 0
}

// runPidnsRestore is PID 1 of the new namespace: args are the restore's
// own options, to pass on.
func runPidnsRestore(args []string) int {
	detached := len(args) > 0 && args[0] == "--detached"
	if len(args) > 0 && strings.HasPrefix(args[0], "--") && args[0] != "--" {
		args = args[1:]
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "nsinit restore: new pid namespace: "+format+"\n", a...)
		return exitFailure
	}
	if os.Getpid() != 1 {
		return fail("not PID 1 (started by hand?)")
	}
	fwd := newForwarder()
	report := os.NewFile(newnsReportFD, "report")
	defer report.Close()
	// This namespace's own /proc, in a mount namespace of our own: the
	// restorer reads pids and moves the cursor through it.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("make mounts private: %v", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail("mount /proc: %v", err)
	}
	dir := "/proc/self/fd/" + strconv.Itoa(newnsDirFD)
	tr, err := imagefile.Read(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return exitStatus(err)
	}
	// Our own runtime threads took the first pids after 1: the image must
	// not need them. The restorer and its threads start above every pid
	// the image names.
	want := map[int]bool{}
	top := 1
	for _, p := range levelZeroPIDs(tr) {
		want[p] = true
		top = max(top, p)
	}
	if tids, err := os.ReadDir("/proc/self/task"); err == nil {
		for _, e := range tids {
			if tid, _ := strconv.Atoi(e.Name()); want[tid] {
				fmt.Fprintf(os.Stderr, "nsinit restore: new pid namespace: pid %d, which the image needs at level 0, is a thread of nsinit's own there: restore it without --into-new-pidns\n", tid)
				return exitPIDTaken
			}
		}
	}
	if err := procfs.WriteLastPID(top); err != nil {
		return fail("%v", err)
	}
	pidfile, err := os.CreateTemp("", "nsinit-root-*.pid")
	if err != nil {
		return fail("%v", err)
	}
	pidfile.Close()
	defer os.Remove(pidfile.Name())
	restore := exec.Command("/proc/self/exe", append([]string{"restore", "-D", dir, "-d", "--pidfile", pidfile.Name()}, args...)...)
	restore.Stdin, restore.Stderr = os.Stdin, os.Stderr
	restore.Stdout = os.Stdout
	restore.ExtraFiles = []*os.File{os.NewFile(newnsDirFD, "image")}
	if err := restore.Start(); err != nil {
		return fail("start the restorer: %v", err)
	}
	fwd.to(restore.Process.Pid)
	code := waitExit(restore)
	fwd.to(0)
	if code != 0 {
		return code
	}
	b, err := os.ReadFile(pidfile.Name())
	if err != nil {
		return fail("the restorer's pidfile: %v", err)
	}
	root, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || root <= 1 {
		return fail("the restorer's pidfile says %q", b)
	}
	pidfd, err := unix.PidfdOpen(root, 0)
	if err != nil {
		return fail("pidfd of the root %d: %v", root, err)
	}
	if err := unix.Sendmsg(int(report.Fd()), []byte{0}, unix.UnixRights(pidfd), nil, 0); err != nil {
		return fail("tell the host the root: %v", err)
	}
	unix.Close(pidfd)
	report.Close()
	if detached {
		// Nobody waits for this init's output: keep none of the caller's
		// stdio (a command substitution would wait for its end of file).
		if err := toDevNull(); err != nil {
			return fail("%v", err)
		}
	}
	// The root is ours now (the restorer, its parent, exited): supervise it
	// as the namespace's init. Zombies of the image keep their parents.
	fwd.to(root)
	return agent.Run(agent.Config{Config: supervise.Config{Adopt: root, ForwardSIGURG: earlyinit.ForwardSIGURG(),
		Started: func() error { fwd.stop(); return nil }}})
}

// forwarder hands SIGINT, SIGTERM and SIGHUP on to one process (the
// restorer, then the root) until the init takes over. PID 1 must catch
// them from its first instant: with the Go runtime's default action it
// would re-raise them at itself, which the kernel ignores for a namespace
// init, and the runtime would then exit with status 2.
type forwarder struct {
	sigs    chan os.Signal
	mu      sync.Mutex
	target  int         // 0: none yet, hold the signals
	pending []os.Signal // held while there is no target
	done    chan struct{}
}

func newForwarder() *forwarder {
	f := &forwarder{sigs: make(chan os.Signal, 8), done: make(chan struct{})}
	signal.Notify(f.sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for {
			select {
			case s := <-f.sigs:
				f.mu.Lock()
				if f.target > 0 {
					_ = syscall.Kill(f.target, s.(syscall.Signal))
				} else {
					f.pending = append(f.pending, s)
				}
				f.mu.Unlock()
			case <-f.done:
				return
			}
		}
	}()
	return f
}

// to sets the process signals go to, and hands it those held meanwhile;
// 0 holds them.
func (f *forwarder) to(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.target = pid
	if pid > 0 {
		for _, s := range f.pending {
			_ = syscall.Kill(pid, s.(syscall.Signal))
		}
		f.pending = nil
	}
}

// stop ends the forwarding once the init has subscribed to the signals.
func (f *forwarder) stop() {
	signal.Stop(f.sigs)
	close(f.done)
}

// toDevNull points stdin, stdout and stderr at /dev/null.
func toDevNull() error {
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(null)
	for fd := 0; fd <= 2; fd++ {
		if err := unix.Dup3(null, fd, 0); err != nil {
			return err
		}
	}
	return nil
}
