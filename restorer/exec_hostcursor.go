package restorer

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/nsinit/nsinit/internal/procfs"
	"golang.org/x/sys/unix"
)

// The host cursor (level 0's ns_last_pid) is shared with every process of
// the machine (docs/kernel.md F1.3). Two things keep a restore honest on a
// host where something forks all the time:
//
//   - parkHostCursor keeps the cursor above the image's level-0 pids for
//     the whole of Execute (every attempt, and between them), so the
//     host's forks do not walk into the image's pids while it is restored
//     - with pid_max 32768 a loop forking a thousand times a second wraps
//     around every half minute;
//   - a clone placed through the cursor can still lose its pid to a fork
//     between the write and the clone (a hand-over between two processes).
//     The level-0 writer checks the clone's level-0 pid through its pidfd
//     right after it parks the cursor again (the plan's OpLastPID with a
//     Target, checkHostPID), before any later step names the proc by its
//     number: a setpgid into a group whose leader is elsewhere is EPERM, a
//     map write through /proc/PID of someone else's process is EPERM or
//     ENOENT - errors that say nothing about the cause. The check makes it
//     ErrHostRace (retried) and ErrPIDTaken, naming the holder.

// errMisplaced marks a failure "errno" that is really the level-0 pid a
// checked clone got (in the low bits), not an errno.
const errMisplaced = 1 << 40

// fdinfoPrefix is where the level-0 writer reads a pidfd's fdinfo (its own
// fd table is the restorer's, CLONE_FILES).
const fdinfoPrefix = "/proc/self/fdinfo/"

// parkHostCursor writes the image's highest level-0 pid to the host cursor
// and returns the function that puts the host's value back - unless the
// cursor is beyond it by then: moving it back would hand the next forks
// pids that were just used, and on a busy host (pid_max 32768) those are
// a window another restore is about to need (a tree just dumped and
// killed, say).
func parkHostCursor(p *Plan) func() {
	park := 0
	for i := range p.Procs {
		park = max(park, p.Procs[i].PIDs[0])
	}
	for _, s := range p.Steps {
		if s.Op == OpThread {
			park = max(park, s.PIDs[0])
		}
	}
	old, err := readLastPID()
	if err != nil || park == 0 || writeLastPID(park) != nil {
		return func() {}
	}
	return func() {
		if cur, err := readLastPID(); err == nil && cur < old {
			_ = writeLastPID(old)
		}
	}
}

var readLastPID = procfs.ReadLastPID

// setHostChecks lays out the checks of the plan's host-cursor clones.
func setHostChecks(p *Plan, b *block) {
	copy(b.hdr().fdinfoPath[:], fdinfoPrefix)
	for i := range p.Steps {
		s := &p.Steps[i]
		r := stepAt(b.base, b.stepsOff, int64(i))
		r.check = -1
		if s.Op == OpLastPID && s.Target >= 0 {
			r.check, r.checkPid = int64(s.Target), int64(p.Procs[s.Target].PIDs[0])
		}
	}
}

// checkHostPID reads the level-0 pid of proc st.check from its pidfd's
// fdinfo and compares it with the plan's.
//
//go:nosplit
func checkHostPID(base unsafe.Pointer, st *stepRec) uintptr {
	got, e := hostPIDOf(base, st.check)
	if e != 0 {
		return e
	}
	if got != st.checkPid {
		return errMisplaced | uintptr(got)
	}
	return 0
}

// hostPIDOf reads the level-0 pid of proc p from its pidfd's fdinfo
// ("Pid:", in the namespace of the procfs read: the host's, seen by a
// builder at level 0). It uses the header's one buffer: only the builder
// holding the token calls it.
//
//go:nosplit
func hostPIDOf(base unsafe.Pointer, p int64) (int64, uintptr) {
	h := hdrAt(base)
	fd := int64(procAt(base, bProcsOff, p).pidfd)
	if fd < 0 {
		return 0, errMisplaced
	}
	path := unsafe.Pointer(&h.fdinfoPath)
	nd := uintptr(1)
	for v := fd; v >= 10; v /= 10 {
		nd++
	}
	v := fd
	for i := nd; i > 0; i-- {
		*(*byte)(unsafe.Add(path, uintptr(len(fdinfoPrefix))+i-1)) = byte('0' + v%10)
		v /= 10
	}
	*(*byte)(unsafe.Add(path, uintptr(len(fdinfoPrefix))+nd)) = 0
	f, _, e := syscall.RawSyscall6(unix.SYS_OPENAT, ^uintptr(99) /* AT_FDCWD */, uintptr(path), unix.O_RDONLY|unix.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return 0, uintptr(e)
	}
	buf := unsafe.Pointer(&h.fdinfoBuf)
	n, _, e := syscall.RawSyscall(unix.SYS_READ, f, uintptr(buf), unsafe.Sizeof(h.fdinfoBuf))
	syscall.RawSyscall(unix.SYS_CLOSE, f, 0, 0)
	if e != 0 {
		return 0, uintptr(e)
	}
	got := int64(0)
	for i := uintptr(0); i+6 < n; i++ {
		if byteAt(buf, i) != '\n' || byteAt(buf, i+1) != 'P' || byteAt(buf, i+2) != 'i' || byteAt(buf, i+3) != 'd' || byteAt(buf, i+4) != ':' {
			continue
		}
		j := i + 5
		for j < n && (byteAt(buf, j) == '\t' || byteAt(buf, j) == ' ') {
			j++
		}
		for ; j < n && byteAt(buf, j) >= '0' && byteAt(buf, j) <= '9'; j++ {
			got = got*10 + int64(byteAt(buf, j)-'0')
		}
		break
	}
	return got, 0
}

// misplaced is the error of step i's check: its clone got level-0 pid got.
func (t *tx) misplaced(i, got int) error {
	s := &t.p.Steps[i]
	want := t.p.Procs[s.Target].PIDs[0]
	err := fmt.Errorf("step %d (%s by %s): %s got level-0 pid %d from the host cursor, not %d",
		i, t.p.describe(s), t.p.name(s.Actor), t.p.name(s.Target), got, want)
	return t.hostPIDError(err, want)
}

// holderOf names the process at level-0 pid, "" when there is none. A
// zombie is named as one, with the parent that has not reaped it (pid and
// command name): that parent is who can free the pid, and a zombie looks
// like any process to ps users who do not read its state.
func holderOf(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ""
	}
	who := fmt.Sprintf("%q (tgid %s)", procfs.StatusField(b, "Name"), procfs.StatusField(b, "Tgid"))
	if !strings.HasPrefix(procfs.StatusField(b, "State"), "Z") {
		return who
	}
	ppid := procfs.StatusField(b, "PPid")
	parent := "?"
	if c, err := os.ReadFile("/proc/" + ppid + "/comm"); err == nil {
		parent = strings.TrimSuffix(string(c), "\n")
	}
	return fmt.Sprintf("a zombie %s that its parent %s %q has not reaped", who, ppid, parent)
}

//go:nosplit
func byteAt(p unsafe.Pointer, i uintptr) byte { return *(*byte)(unsafe.Add(p, i)) }

// waitYoungHolder waits, until deadline at most, while level-0 pid is held
// by a process that started less than a second ago: an unrelated fork,
// such as one that took a pid from the previous attempt (ErrHostRace), is
// usually gone in milliseconds. It waits for the holder's exit through a
// pidfd, then for its parent to reap it. A holder that has run longer is
// left to the caller (ErrPIDTaken).
func waitYoungHolder(pid int, deadline time.Time) {
	for time.Now().Before(deadline) {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return // free (ESRCH)
		}
		age, ok := startedAgo(pid)
		if !ok || age > time.Second {
			unix.Close(fd)
			return
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(pfd, int(time.Until(deadline)/time.Millisecond)+1)
		unix.Close(fd)
		if n > 0 {
			// exited: its parent reaps it; nothing tells us when
			time.Sleep(time.Millisecond)
		}
	}
}

// startedAgo is how long ago the process at pid started (stat field 22,
// in clock ticks of 1/100 s since boot).
func startedAgo(pid int) (time.Duration, bool) {
	st, err := procfs.New("/proc").Stat(pid)
	if err != nil {
		return 0, false
	}
	start := st.StartTime
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()) - time.Duration(start)*10*time.Millisecond, true
}
