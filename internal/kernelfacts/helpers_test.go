package kernelfacts

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// helperEnv marks a re-executed test binary as a helper: os.Args[1] names
// its role, fd 3 is its report pipe, fd 4 its control pipe (EOF = exit).
const helperEnv = "KERNELFACTS_HELPER"

// roles maps a helper role to its code; a role returns the exit status.
var roles = map[string]func(args []string) int{}

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		// Roles that setns(CLONE_NEWPID) run on the main thread, which
		// stays locked: the runtime then never clones a thread from it.
		runtime.LockOSThread()
		report, control = os.NewFile(3, "report"), os.NewFile(4, "control")
		f, ok := roles[os.Args[1]]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper role %q\n", os.Args[1])
			os.Exit(120)
		}
		os.Exit(f(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// spawnOpts describes one raw clone3.
type spawnOpts struct {
	flags      uint64   // CLONE_NEWPID, CLONE_PARENT, ...
	pids       []int    // set_tid, OUTERMOST first as NSpid prints; nil = none
	exitSignal int      // default SIGCHLD; -1 gives 0
	gate       int      // if > 0: the child reads one byte from it before execve
	fds        []int    // dup'ed to 3, 4, ... in the child
	argv       []string // a helper role and its args; or a program with prog
	prog       string   // a program to exec instead of this test binary
}

// proc is a child created by spawn. pid is as the caller's active pid
// namespace sees it.
type proc struct {
	pid   int
	pidfd int
}

// childPlan is everything the child needs between clone3 and execve,
// prepared before the clone: the child only makes raw syscalls.
type childPlan struct {
	path *byte
	argv **byte
	envp **byte
	mask uint64
	gate int
	n    int
	src  [8]int
}

var exe = func() string {
	p, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return p
}()

func cstrings(ss []string) []*byte {
	out := make([]*byte, 0, len(ss)+1)
	for _, s := range ss {
		b, err := syscall.BytePtrFromString(s)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return append(out, nil)
}

// spawn creates a child with clone3 (CLONE_PIDFD always) from a locked
// thread with every signal blocked; the child sets PDEATHSIG=SIGKILL,
// dup's fds to 3.., waits for its gate, and execs.
func spawn(o spawnOpts) (proc, error) {
	path := exe
	argv := o.argv
	env := os.Environ()
	if o.prog != "" {
		path = o.prog
	} else {
		argv = append([]string{exe}, argv...)
		env = append(env, helperEnv+"=1")
	}
	if len(o.fds) > len(childPlan{}.src) {
		return proc{}, errors.New("too many fds")
	}
	pathB, _ := syscall.BytePtrFromString(path)
	argvB, envB := cstrings(argv), cstrings(env)
	plan := &childPlan{path: pathB, argv: &argvB[0], envp: &envB[0], gate: o.gate, n: len(o.fds)}
	for i, fd := range o.fds {
		// Above every target number, so no dup3 clobbers a later source.
		hi, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 100)
		if err != nil {
			return proc{}, err
		}
		defer unix.Close(hi)
		plan.src[i] = hi
	}
	var tids [sys.MaxSetTID]int32
	n, err := sys.SetTID(tids[:], o.pids)
	if err != nil {
		return proc{}, err
	}
	pidfd := int32(-1)
	args := &sys.CloneArgs{
		Flags:      o.flags | sys.CLONE_PIDFD,
		PidFD:      uint64(uintptr(unsafe.Pointer(&pidfd))),
		ExitSignal: uint64(unix.SIGCHLD),
	}
	if n > 0 { // a set_tid address with size 0 is EINVAL
		args.SetTID, args.SetTIDSize = uint64(uintptr(unsafe.Pointer(&tids[0]))), uint64(n)
	}
	if o.exitSignal < 0 {
		args.ExitSignal = 0
	} else if o.exitSignal > 0 {
		args.ExitSignal = uint64(o.exitSignal)
	}
	runtime.LockOSThread()
	old := sys.BlockAllSignals()
	pid, errno := rawSpawn(args, plan)
	sys.RestoreSignals(old)
	runtime.UnlockOSThread()
	runtime.KeepAlive(argvB)
	runtime.KeepAlive(envB)
	runtime.KeepAlive(pathB)
	runtime.KeepAlive(&tids)
	if errno != 0 {
		return proc{}, errno
	}
	return proc{pid: int(pid), pidfd: int(pidfd)}, nil
}

// rawSpawn is the fork-style clone3; the child side only makes raw
// syscalls (nosplit: no stack check can run the scheduler in the child).
//
//go:nosplit
//go:norace
func rawSpawn(args *sys.CloneArgs, c *childPlan) (uintptr, syscall.Errno) {
	r, _, e := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(args)), sys.CloneArgsSize, 0)
	if e != 0 || r != 0 {
		return r, e
	}
	syscall.RawSyscall(unix.SYS_PRCTL, unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0)
	for i := 0; i < c.n && i < len(c.src); i++ {
		syscall.RawSyscall(unix.SYS_DUP3, uintptr(c.src[i]), uintptr(3+i), 0)
	}
	if c.gate > 0 {
		var b [1]byte
		syscall.RawSyscall(unix.SYS_READ, uintptr(c.gate), uintptr(unsafe.Pointer(&b[0])), 1)
	}
	syscall.RawSyscall6(unix.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&c.mask)), 0, 8, 0, 0)
	syscall.RawSyscall(unix.SYS_EXECVE, uintptr(unsafe.Pointer(c.path)), uintptr(unsafe.Pointer(c.argv)), uintptr(unsafe.Pointer(c.envp)))
	syscall.RawSyscall(unix.SYS_EXIT_GROUP, 127, 0, 0)
	return 0, 0
}

// reap waits for p (a child of the caller) to exit and reaps it.
func reap(p proc) (unix.WaitStatus, error) {
	_, st, err := sys.WaitPidfd(p.pidfd, unix.WALL)
	unix.Close(p.pidfd)
	return st, err
}

// waitExited blocks until p has exited (pidfd readable), without reaping.
func waitExited(t testing.TB, pidfd int) {
	t.Helper()
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 60_000) // a fail-safe against a hang, not a guess
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("waiting for pidfd %d: n=%d %v", pidfd, n, err)
		}
		return
	}
}

// exited reports whether the process behind pidfd has exited, now.
func exited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	n, _ := unix.Poll(fds, 0)
	return n == 1
}

// helper is a re-executed test binary the test talks to.
type helper struct {
	t     testing.TB
	proc  proc
	rep   *os.File
	lines *bufio.Reader
	ctl   *os.File
	seen  map[string][]string
	done  bool
}

// start spawns a helper with role args under o (o.fds is replaced by the
// report and control pipes).
func start(t testing.TB, o spawnOpts, args ...string) (*helper, error) {
	t.Helper()
	var rp, cp [2]int
	if err := unix.Pipe2(rp[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if err := unix.Pipe2(cp[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	o.fds = append([]int{rp[1], cp[0]}, o.fds...)
	o.argv = args
	p, err := spawn(o)
	unix.Close(rp[1])
	unix.Close(cp[0])
	if err != nil {
		unix.Close(rp[0])
		unix.Close(cp[1])
		return nil, err
	}
	unix.SetNonblock(rp[0], true)
	h := &helper{t: t, proc: p, rep: os.NewFile(uintptr(rp[0]), "report"), ctl: os.NewFile(uintptr(cp[1]), "control"), seen: map[string][]string{}}
	h.lines = bufio.NewReader(h.rep)
	t.Cleanup(h.kill)
	return h, nil
}

func mustStart(t testing.TB, o spawnOpts, args ...string) *helper {
	t.Helper()
	h, err := start(t, o, args...)
	if err != nil {
		t.Fatalf("spawn %v: %v", args, err)
	}
	return h
}

// want returns the fields after key of the first report line starting with
// key, reading (and keeping) other lines as they come.
func (h *helper) want(key string) []string {
	h.t.Helper()
	for {
		if v, ok := h.seen[key]; ok {
			delete(h.seen, key)
			return v
		}
		h.rep.SetReadDeadline(time.Now().Add(60 * time.Second)) // fail-safe only
		l, err := h.lines.ReadString('\n')
		if err != nil {
			h.t.Fatalf("helper %d: waiting for %q: %v (other lines: %v)", h.proc.pid, key, err, h.seen)
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if f[0] == "fail" {
			h.t.Fatalf("helper %d: %s", h.proc.pid, l)
		}
		h.seen[f[0]] = f[1:]
	}
}

// send writes one line to the helper's control pipe.
func (h *helper) send(s string) {
	if _, err := h.ctl.WriteString(s + "\n"); err != nil {
		h.t.Fatal(err)
	}
}

// stop closes the control pipe and reaps the helper, returning its status.
func (h *helper) stop() unix.WaitStatus {
	h.t.Helper()
	h.ctl.Close()
	st, err := reap(h.proc)
	h.done = true
	h.rep.Close()
	if err != nil {
		h.t.Fatalf("reap %d: %v", h.proc.pid, err)
	}
	return st
}

func (h *helper) kill() {
	if h.done {
		return
	}
	h.done = true
	h.ctl.Close()
	unix.PidfdSendSignal(h.proc.pidfd, unix.SIGKILL, nil, 0)
	reap(h.proc)
	h.rep.Close()
}

// --- helper side ---

// report and control are fd 3 and fd 4, in a helper only.
var report, control *os.File

func say(format string, a ...any) {
	fmt.Fprintf(report, format+"\n", a...)
}

func fail(format string, a ...any) int {
	say("fail "+format, a...)
	return 1
}

// waitEOF blocks until the control pipe is closed.
func waitEOF() {
	var b [64]byte
	for {
		if n, err := control.Read(b[:]); n == 0 || err != nil {
			return
		}
	}
}

// readLine reads one line from the control pipe.
func readLine() string {
	var l []byte
	var b [1]byte
	for {
		if n, _ := control.Read(b[:]); n == 0 || b[0] == '\n' {
			return string(l)
		}
		l = append(l, b[0])
	}
}

func init() {
	// pause: report ready with its NSpid, then live until control EOF.
	roles["pause"] = func(args []string) int {
		b, _ := os.ReadFile("/proc/self/status")
		say("ready %d %s", os.Getpid(), testutil.Field(string(b), "NSpid"))
		waitEOF()
		return 0
	}
	// exit CODE: exit at once.
	roles["exit"] = func(args []string) int {
		c, _ := strconv.Atoi(args[0])
		return c
	}
}

// --- shared ---

// nsLine returns the columns of a NS* line of /proc/PID/status (through
// the procfs mounted on /proc, the host's in these tests).
func nsLine(pid int, key string) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	return strings.Fields(testutil.Field(string(b), key))
}

func atoi(s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return -999
	}
	return n
}

func atois(ss []string) []int {
	out := make([]int, len(ss))
	for i, s := range ss {
		out[i] = atoi(s)
	}
	return out
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return atoi(string(b)), nil
}

// writeFile writes s with one write(2) and returns the errno name or "ok".
func writeFile(path, s string) string {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "open:" + errName(err)
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(s))
	return errName(err)
}

// errName is "ok" for nil, the errno's symbolic name otherwise.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

// fdinfoNSpid is the NSpid line of /proc/self/fdinfo/<pidfd> (host procfs).
func fdinfoNSpid(pidfd int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", pidfd))
	if err != nil {
		return nil
	}
	return atois(strings.Fields(testutil.Field(string(b), "NSpid")))
}

func join(p []int) string {
	s := make([]string, len(p))
	for i, v := range p {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, " ")
}

// freeHostPids returns n consecutive host pids that no task holds now
// (other processes keep forking: callers retry on EEXIST).
func freeHostPids(t testing.TB, n int) []int {
	t.Helper()
	max, err := readInt("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	lo := max / 2
	for try := 0; try < 1000; try++ {
		base := lo + rand.IntN(max-lo-n-1)
		ok := true
		for p := base; p < base+n && ok; p++ {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); !errors.Is(err, os.ErrNotExist) {
				ok = false
			}
		}
		if ok {
			out := make([]int, n)
			for i := range out {
				out[i] = base + i
			}
			return out
		}
	}
	t.Fatal("no free host pid window")
	return nil
}

// withHostPids runs f with n free host pids until it does not fail with
// EEXIST (a pid taken by an unrelated process between scan and clone).
func withHostPids(t testing.TB, n int, f func(pids []int) error) {
	t.Helper()
	for try := 0; try < 20; try++ {
		err := f(freeHostPids(t, n))
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("host pids kept being taken")
}

// setnsPid sets the calling (locked) thread's pid_for_children.
func setnsPid(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Setns(fd, unix.CLONE_NEWPID)
}

func needRoot(t *testing.T) {
	t.Helper()
	testutil.Require(t, testutil.Root, testutil.SetTID)
}
