package kernelfacts

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	// f31: the init of a fresh namespace reports its parent, session and
	// group as it sees them, and those of a child that formed its group.
	roles["f31"] = func(args []string) int {
		sid, _ := unix.Getsid(0)
		say("f31 %d %d %d", os.Getppid(), sid, unix.Getpgrp())
		c, err := spawn(spawnOpts{fds: []int{3, 4}, argv: []string{"f31c"}})
		if err != nil {
			return fail("child: %v", err)
		}
		say("f31host %d", fdinfoNSpid(c.pidfd)[0])
		waitEOF()
		return 0
	}
	roles["f31c"] = func(args []string) int {
		if err := unix.Setpgid(0, 0); err != nil {
			return fail("setpgid: %v", err)
		}
		sid, _ := unix.Getsid(0)
		say("f31c %d %d %d", os.Getpid(), sid, unix.Getpgrp())
		waitEOF()
		return 0
	}
}

// TestF3_1LeadersInAnAncestorReadAsZero: inside a namespace, a parent,
// session or group leader living in an ancestor namespace reads as 0; the
// NS* lines of the host's /proc show one column per level with 0 there.
func TestF3_1LeadersInAnAncestorReadAsZero(t *testing.T) {
	needRoot(t)
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f31")
	if r := a.want("f31"); strings.Join(r, " ") != "0 0 0" {
		t.Errorf("init's getppid, getsid, getpgid: %v, want 0 0 0", r)
	}
	sid, _ := unix.Getsid(0)
	pg := unix.Getpgrp()
	host := a.proc.pid
	if got := strings.Join(nsLine(host, "NSsid"), " "); got != fmt.Sprintf("%d 0", sid) {
		t.Errorf("init's NSsid %q, want \"%d 0\"", got, sid)
	}
	if got := strings.Join(nsLine(host, "NSpgid"), " "); got != fmt.Sprintf("%d 0", pg) {
		t.Errorf("init's NSpgid %q, want \"%d 0\"", got, pg)
	}
	c := a.want("f31c")
	ch := atoi(a.want("f31host")[0])
	if c[1] != "0" || c[2] != c[0] {
		t.Errorf("child with its own group sees sid %s pgid %s (pid %s), want 0 and its pid", c[1], c[2], c[0])
	}
	if got := strings.Join(nsLine(ch, "NSpgid"), " "); got != fmt.Sprintf("%d %s", ch, c[0]) {
		t.Errorf("child's NSpgid %q, want \"%d %s\"", got, ch, c[0])
	}
	if got := strings.Join(nsLine(ch, "NSsid"), " "); got != fmt.Sprintf("%d 0", sid) {
		t.Errorf("child's NSsid %q, want \"%d 0\"", got, sid)
	}
	a.stop()
}

func init() {
	// f42: the init of a fresh namespace. S (pid 50) leads a session with
	// one member M, then exits and is reaped.
	roles["f42"] = func(args []string) int {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return fail("pipe: %v", err)
		}
		s, err := spawn(spawnOpts{pids: []int{50}, fds: []int{p[1], 4}, argv: []string{"f42s"}})
		if err != nil {
			return fail("S: %v", err)
		}
		unix.Close(p[1])
		var m, mHost int
		if _, err := fmt.Fscan(os.NewFile(uintptr(p[0]), "s"), &m, &mHost); err != nil {
			return fail("read S: %v", err)
		}
		mfd, err := unix.PidfdOpen(m, 0) // before S exits: M is then ours
		if err != nil {
			return fail("pidfd M: %v", err)
		}
		if _, err := reap(s); err != nil {
			return fail("reap S: %v", err)
		}
		sid := nsLine(mHost, "NSsid")
		kill := errName(unix.Kill(50, 0))
		try := func() string {
			c, err := spawn(spawnOpts{pids: []int{50}, argv: []string{"exit", "0"}})
			if err == nil {
				reap(c)
			}
			return errName(err)
		}
		alive := try()
		unix.PidfdSendSignal(mfd, unix.SIGKILL, nil, 0)
		waitExited(nilT{}, mfd)
		zombie := try()
		reap(proc{pid: m, pidfd: mfd})
		gone := try()
		say("f42 %s %s %s %s %s", sid[len(sid)-1], kill, alive, zombie, gone)
		waitEOF()
		return 0
	}
	roles["f42s"] = func(args []string) int {
		if _, err := unix.Setsid(); err != nil {
			return fail("setsid: %v", err)
		}
		m, err := spawn(spawnOpts{fds: []int{4, 4}, argv: []string{"hold"}})
		if err != nil {
			return fail("M: %v", err)
		}
		say("%d %d", m.pid, fdinfoNSpid(m.pidfd)[0])
		return 0
	}
	// hold: live until control EOF, silently.
	roles["hold"] = func(args []string) int { waitEOF(); return 0 }
}

// nilT lets helper code use waitExited (it cannot fail a test).
type nilT struct{ testing.TB }

func (nilT) Helper()               {}
func (nilT) Fatalf(string, ...any) { os.Exit(3) }

// TestF4_2DeadLeadersPidStaysTaken: a session id outlives its leader and
// keeps the pid number in use (set_tid EEXIST, kill ESRCH) while a member,
// even a zombie, refers to it; once every member is reaped it is free.
func TestF4_2DeadLeadersPidStaysTaken(t *testing.T) {
	needRoot(t)
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f42")
	r := a.want("f42")
	if want := "50 ESRCH EEXIST EEXIST ok"; strings.Join(r, " ") != want {
		t.Errorf("member's sid, kill(50,0), set_tid {50} with a live member, a zombie member, none: %v, want %s", r, want)
	}
	a.stop()
}

// TestF5_3DeathOfTheInit: SIGKILL of a namespace's init kills every task
// in it, including one whose parent is outside; the init is not a zombie
// until that task is reaped by its own parent. After unshare(CLONE_NEWPID)
// the first child is pid 1, and once it is gone every fork is ENOMEM.
func TestF5_3DeathOfTheInit(t *testing.T) {
	needRoot(t)
	// A single-threaded init: with a multi-threaded one, /proc shows the
	// exited group leader as Z while another thread waits for the members.
	ap, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, prog: "/usr/bin/busybox", argv: []string{"busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	a := &helper{t: t, proc: ap}
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			unix.PidfdSendSignal(ap.pidfd, unix.SIGKILL, nil, 0)
			reap(ap)
		}
	})
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
		if r.err = setnsPid(fmt.Sprintf("/proc/%d/ns/pid", a.proc.pid)); r.err == nil {
			r.c, r.err = start(t, spawnOpts{}, "pause")
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
	if ns := c.want("ready"); len(ns) != 3 || ns[0] != ns[2] || ns[2] == "1" {
		t.Fatalf("child born via setns reports getpid, NSpid %v: want [p host p], p != 1", ns)
	}
	if pp := strings.Join(nsLine(c.proc.pid, "PPid"), ""); pp != strconv.Itoa(os.Getpid()) {
		t.Fatalf("child born via setns has parent %s", pp)
	}
	unix.PidfdSendSignal(a.proc.pidfd, unix.SIGKILL, nil, 0)
	waitExited(t, c.proc.pidfd) // killed with its namespace
	if exited(a.proc.pidfd) {
		t.Errorf("the init became reapable while a member was unreaped")
	}
	if st := stateOf(a.proc.pid); st == "Z" || st == "" {
		t.Errorf("dying init's state %q before its member is reaped, want not Z", st)
	}
	if st := c.stop(); !st.Signaled() || st.Signal() != unix.SIGKILL {
		t.Errorf("member's status %v, want killed by SIGKILL", st)
	}
	waitExited(t, a.proc.pidfd)
	if st := stateOf(a.proc.pid); st != "Z" {
		t.Errorf("init's state %q after its member was reaped, want Z", st)
	}
	reaped = true
	if st, err := reap(ap); err != nil || !st.Signaled() || st.Signal() != unix.SIGKILL {
		t.Errorf("init's status %v %v, want killed by SIGKILL", st, err)
	}

	// unshare: the first child is pid 1; after it exits, ENOMEM.
	type ures struct {
		first     []int
		err, next error
	}
	udone := make(chan ures)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its new pid_for_children
		var u ures
		if u.err = unix.Unshare(unix.CLONE_NEWPID); u.err == nil {
			var p proc
			if p, u.err = spawn(spawnOpts{argv: []string{"exit", "0"}}); u.err == nil {
				u.first = fdinfoNSpid(p.pidfd)
				reap(p)
				var q proc
				if q, u.next = spawn(spawnOpts{argv: []string{"exit", "0"}}); u.next == nil {
					reap(q)
				}
			}
		}
		udone <- u
	}()
	u := <-udone
	if u.err != nil || len(u.first) != 2 || u.first[1] != 1 || u.next != unix.ENOMEM {
		t.Errorf("after unshare: %v, first child NSpid %v, next fork %v; want [host 1] and ENOMEM", u.err, u.first, u.next)
	}
}

func stateOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return f[0]
}

// statField is field n (1-based, as proc(5) numbers them) of /proc/PID/stat.
func statField(pid, n int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return f[n-3]
}

// TestF6_1Zombies: a zombie shows State Z, its NSpid at every level and
// its raw wait status in /proc/PID/stat field 52 (also readable with
// waitid WNOWAIT); ns/pid and ns/user open, ns/mnt and
// ns/pid_for_children do not.
func TestF6_1Zombies(t *testing.T) {
	needRoot(t)
	z, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, argv: []string{"exit", "7"}})
	if err != nil {
		t.Fatal(err)
	}
	defer reap(z)
	waitExited(t, z.pidfd)
	if st := stateOf(z.pid); st != "Z" {
		t.Errorf("state %q, want Z", st)
	}
	if got := strings.Join(nsLine(z.pid, "NSpid"), " "); got != fmt.Sprintf("%d 1", z.pid) {
		t.Errorf("zombie's NSpid %q", got)
	}
	if f := statField(z.pid, 52); f != "1792" {
		t.Errorf("stat field 52 of exit(7): %s, want 1792", f)
	}
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, z.pidfd, &si, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Error(err)
	}
	if stateOf(z.pid) != "Z" {
		t.Error("waitid WNOWAIT reaped the zombie")
	}
	for ns, want := range map[string]string{"pid": "ok", "user": "ok", "mnt": "ENOENT", "pid_for_children": "ENOENT"} {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", z.pid, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		if errName(err) != want {
			t.Errorf("open a zombie's ns/%s: %s, want %s", ns, errName(err), want)
		}
	}
	s, err := spawn(spawnOpts{prog: "/usr/bin/busybox", argv: []string{"busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer reap(s)
	unix.PidfdSendSignal(s.pidfd, unix.SIGTERM, nil, 0)
	waitExited(t, s.pidfd)
	if f := statField(s.pid, 52); f != "15" {
		t.Errorf("stat field 52 of a SIGTERM death: %s, want 15", f)
	}
}

// cgroup2 returns the cgroup v2 mount point.
func cgroup2(t *testing.T) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		l := s.Text()
		if _, after, ok := strings.Cut(l, " - "); ok && strings.HasPrefix(after, "cgroup2 ") {
			return strings.Fields(l)[4]
		}
	}
	t.Skip("no cgroup v2 mount")
	return ""
}

func init() {
	// tracer PID EVENTS: seize and interrupt PID, report the stop, its
	// state, TracerPid and (if EVENTS is not "-") the cgroup's events;
	// detach at the next control line.
	roles["tracer"] = func(args []string) int {
		pid, _ := strconv.Atoi(args[0])
		if err := unix.PtraceSeize(pid); err != nil {
			return fail("seize: %v", err)
		}
		if _, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_INTERRUPT, uintptr(pid), 0, 0, 0, 0); e != 0 {
			return fail("interrupt: %v", e)
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
			return fail("wait: %v", err)
		}
		ev := "-"
		if args[1] != "-" {
			b, _ := os.ReadFile(args[1])
			ev = strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", ",")
			ev = strings.ReplaceAll(ev, " ", "=")
		}
		say("stopped %v %d %s %s %s", ws.Stopped(), ws.TrapCause(), stateOf(pid), strings.Join(nsLine(pid, "TracerPid"), ""), ev)
		readLine()
		unix.PtraceDetach(pid)
		return 0
	}
}

// quiet reports whether waitid on the parent's side has nothing to say:
// no stop, no continue, no exit.
func quiet(t *testing.T, pidfd int) {
	t.Helper()
	var si unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &si, unix.WSTOPPED|unix.WCONTINUED|unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if pid := *(*int32)(unsafePtr(&si, 16)); pid != 0 {
		t.Errorf("the parent was told something (waitid reports pid %d)", pid)
	}
}

// TestF10_1CgroupV2FreezeIsSilent: writing 1 to cgroup.freeze freezes the
// cgroup's tasks (state S, cgroup.events frozen 1) without the parent
// being told anything, on freeze or thaw, and a ptrace interrupt still
// stops a frozen task while it stays frozen.
func TestF10_1CgroupV2FreezeIsSilent(t *testing.T) {
	needRoot(t)
	cg := filepath.Join(cgroup2(t), fmt.Sprintf("kernelfacts-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	defer os.Remove(cg)
	p, err := spawn(spawnOpts{prog: "/usr/bin/busybox", argv: []string{"busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
		reap(p)
	}()
	if w := writeFile(filepath.Join(cg, "cgroup.procs"), strconv.Itoa(p.pid)); w != "ok" {
		t.Fatalf("move into the cgroup: %s", w)
	}
	events := filepath.Join(cg, "cgroup.events")
	waitFrozen := func(want string) {
		in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(in)
		if _, err := unix.InotifyAddWatch(in, events, unix.IN_MODIFY); err != nil {
			t.Fatal(err)
		}
		for {
			b, _ := os.ReadFile(events)
			if strings.Contains(string(b), "frozen "+want) {
				return
			}
			var buf [256]byte
			if _, err := unix.Read(in, buf[:]); err != nil && err != unix.EINTR {
				t.Fatal(err)
			}
		}
	}
	if w := writeFile(filepath.Join(cg, "cgroup.freeze"), "1"); w != "ok" {
		t.Fatalf("freeze: %s", w)
	}
	waitFrozen("1")
	if st := stateOf(p.pid); st != "S" {
		t.Errorf("frozen task's state %q, want S", st)
	}
	quiet(t, p.pidfd)
	tr := mustStart(t, spawnOpts{}, "tracer", strconv.Itoa(p.pid), events)
	r := tr.want("stopped")
	if r[0] != "true" || r[1] != strconv.Itoa(unix.PTRACE_EVENT_STOP) || r[2] != "t" || !strings.Contains(r[4], "frozen=1") {
		t.Errorf("ptrace interrupt of a frozen task: stopped %s event %s state %s events %s; want a PTRACE_EVENT_STOP, t, still frozen", r[0], r[1], r[2], r[4])
	}
	tr.send("detach")
	tr.stop()
	quiet(t, p.pidfd)
	writeFile(filepath.Join(cg, "cgroup.freeze"), "0")
	waitFrozen("0")
	quiet(t, p.pidfd)
}

// TestF10_4PtraceSeizeIsSilent: PTRACE_SEIZE + PTRACE_INTERRUPT by a
// tracer that is not the parent stops the task (state t, TracerPid shows
// the tracer) and the parent is told nothing, while stopped or after.
func TestF10_4PtraceSeizeIsSilent(t *testing.T) {
	needRoot(t)
	p, err := spawn(spawnOpts{prog: "/usr/bin/busybox", argv: []string{"busybox", "sleep", "1000"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
		reap(p)
	}()
	tr := mustStart(t, spawnOpts{}, "tracer", strconv.Itoa(p.pid), "-")
	r := tr.want("stopped")
	if r[0] != "true" || r[1] != strconv.Itoa(unix.PTRACE_EVENT_STOP) || r[2] != "t" || r[3] != strconv.Itoa(tr.proc.pid) {
		t.Errorf("seize+interrupt: stopped %s event %s state %s TracerPid %s; want a PTRACE_EVENT_STOP, t, tracer %d", r[0], r[1], r[2], r[3], tr.proc.pid)
	}
	quiet(t, p.pidfd)
	tr.send("detach")
	tr.stop()
	quiet(t, p.pidfd)
	if st := stateOf(p.pid); st == "t" || st == "T" {
		t.Errorf("after detach the task is still stopped (%q)", st)
	}
}
