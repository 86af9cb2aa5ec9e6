package kernelfacts

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

const lastPID = "/proc/sys/kernel/ns_last_pid"

func init() {
	// f11 is the init of a fresh namespace A. It creates B, a child
	// namespace, enters B as pid_for_children and writes 700 to the
	// ns_last_pid it reaches through B's init's root, then forks.
	roles["f11"] = func(args []string) int {
		b, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, fds: []int{3, 4}, argv: []string{"pause"}})
		if err != nil {
			return fail("spawn B: %v", err)
		}
		// /proc is the host's procfs: B's init is named by its host pid.
		bHost := fdinfoNSpid(b.pidfd)[0]
		if err := setnsPid(fmt.Sprintf("/proc/%d/ns/pid", bHost)); err != nil {
			return fail("setns B: %v", err)
		}
		w := writeFile(fmt.Sprintf("/proc/%d/root/proc/sys/kernel/ns_last_pid", bHost), "700")
		c, err := spawn(spawnOpts{argv: []string{"exit", "0"}})
		if err != nil {
			return fail("fork into B: %v", err)
		}
		nspid := fdinfoNSpid(c.pidfd)
		reap(c)
		cur, _ := readInt(lastPID)
		say("f11 %s %d %s", w, cur, join(nspid))
		waitEOF()
		return 0
	}
}

// TestF1_1NsLastPidIsTheWritersActiveNS: a writer whose pid_for_children is
// a child namespace B writes, through B's init's root, to ns_last_pid: the
// cursor of its ACTIVE namespace A moves, B's does not.
func TestF1_1NsLastPidIsTheWritersActiveNS(t *testing.T) {
	needRoot(t)
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f11")
	r := a.want("f11")
	if r[0] != "ok" {
		t.Fatalf("write: %s", r[0])
	}
	cur, nspid := atoi(r[1]), atois(r[2:])
	if len(nspid) != 3 {
		t.Fatalf("NSpid of the child forked into B: %v, want 3 levels", nspid)
	}
	// A few Go runtime threads of the helpers may take pids too: the child
	// gets A's cursor+1 or a little more, and a small pid in B.
	if nspid[1] <= 700 || nspid[1] > 750 {
		t.Errorf("A-level pid %d: A's cursor did not become 700", nspid[1])
	}
	if nspid[2] >= 700 {
		t.Errorf("B-level pid %d: the write reached B's cursor", nspid[2])
	}
	if cur < nspid[1] {
		t.Errorf("A's cursor %d after the fork of A-level pid %d", cur, nspid[1])
	}
	a.stop()
}

func init() {
	// f12 MODE: the init of a fresh namespace drops to the credentials MODE
	// on its (locked) thread, then opens and writes ns_last_pid.
	roles["f12"] = func(args []string) int {
		var caps uint64
		switch args[0] {
		case "checkpoint_restore":
			caps = 1 << unix.CAP_CHECKPOINT_RESTORE
		case "sys_admin":
			caps = 1 << unix.CAP_SYS_ADMIN
		case "none", "uid1000":
		}
		if args[0] == "uid1000" {
			// Per-thread setresuid: the thread loses every capability.
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 1000, 1000, 1000); e != 0 {
				return fail("setresuid: %v", e)
			}
		} else {
			hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
			data := [2]unix.CapUserData{
				{Effective: uint32(caps), Permitted: uint32(caps)},
				{Effective: uint32(caps >> 32), Permitted: uint32(caps >> 32)},
			}
			if err := unix.Capset(&hdr, &data[0]); err != nil {
				return fail("capset: %v", err)
			}
		}
		fd, err := unix.Open(lastPID, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			say("f12 %s -", errName(err))
			return 0
		}
		_, err = unix.Write(fd, []byte("50"))
		say("f12 ok %s", errName(err))
		return 0
	}
}

// TestF1_2NsLastPidNeedsCheckpointRestoreOrSysAdmin: anyone opens it; the
// write needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN, uid 0 alone is not
// enough.
func TestF1_2NsLastPidNeedsCheckpointRestoreOrSysAdmin(t *testing.T) {
	needRoot(t)
	for mode, want := range map[string]string{
		"checkpoint_restore": "ok", "sys_admin": "ok", "none": "EPERM", "uid1000": "EPERM",
	} {
		h := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f12", mode)
		r := h.want("f12")
		if r[0] != "ok" || r[1] != want {
			t.Errorf("caps %s: open %s write %s, want open ok write %s", mode, r[0], r[1], want)
		}
		h.stop()
	}
}

func init() {
	// f13: the init of a fresh namespace A.
	roles["f13"] = func(args []string) int {
		// A taken pid is skipped without an error.
		occ, err := spawn(spawnOpts{pids: []int{1001}, fds: []int{3, 4}, argv: []string{"pause"}})
		if err != nil {
			return fail("occupant: %v", err)
		}
		_ = occ
		w := writeFile(lastPID, "1000")
		c, err := spawn(spawnOpts{argv: []string{"exit", "0"}})
		if err != nil {
			return fail("fork: %v", err)
		}
		reap(c)
		say("skip %s %d", w, c.pid)
		// Out-of-range values.
		max, _ := readInt("/proc/sys/kernel/pid_max")
		say("range %s %s", writeFile(lastPID, strconv.Itoa(max+5)), writeFile(lastPID, "-1"))
		// A fork in a descendant namespace moves A's cursor.
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return fail("pipe: %v", err)
		}
		w = writeFile(lastPID, "2000")
		b, err := spawn(spawnOpts{flags: unix.CLONE_NEWPID, fds: []int{p[1], 4}, argv: []string{"f13b"}})
		if err != nil {
			return fail("spawn B: %v", err)
		}
		unix.Close(p[1])
		f := os.NewFile(uintptr(p[0]), "b")
		var aLevel int
		if _, err := fmt.Fscan(f, &aLevel); err != nil {
			return fail("read B: %v", err)
		}
		cur, _ := readInt(lastPID)
		say("desc %s %d %d", w, aLevel, cur)
		_ = b
		waitEOF()
		return 0
	}
	// f13b: the init of B forks once and reports the A-level pid (the
	// middle NSpid column: host, A, B) of its child.
	roles["f13b"] = func(args []string) int {
		c, err := spawn(spawnOpts{argv: []string{"exit", "0"}})
		if err != nil {
			return fail("fork: %v", err)
		}
		ns := fdinfoNSpid(c.pidfd)
		reap(c)
		if len(ns) != 3 {
			return fail("NSpid %v", ns)
		}
		say("%d", ns[1])
		waitEOF()
		return 0
	}
}

// TestF1_3CursorIsNotAReservation: a taken pid is skipped silently, values
// outside [0, pid_max) are EINVAL, and a fork in a descendant namespace
// moves the cursor.
func TestF1_3CursorIsNotAReservation(t *testing.T) {
	needRoot(t)
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f13")
	r := a.want("skip")
	if got := atoi(r[1]); r[0] != "ok" || got <= 1001 || got > 1010 {
		t.Errorf("cursor 1000 with 1001 taken: write %s, fork got %d, want 1002 (or a little more)", r[0], got)
	}
	r = a.want("range")
	if r[0] != "EINVAL" || r[1] != "EINVAL" {
		t.Errorf("ns_last_pid = pid_max+5: %s, = -1: %s, want EINVAL both", r[0], r[1])
	}
	r = a.want("desc")
	aLevel, cur := atoi(r[1]), atoi(r[2])
	if r[0] != "ok" || aLevel <= 2000 || aLevel > 2050 {
		t.Errorf("child of B got A-level pid %d after A's cursor was set to 2000 (%s)", aLevel, r[0])
	}
	if cur < aLevel {
		t.Errorf("A's cursor %d after a fork in B took A-level pid %d: not moved", cur, aLevel)
	}
	a.stop()
}

func init() {
	// f14: the init of a fresh namespace places a child with set_tid.
	roles["f14"] = func(args []string) int {
		c0, _ := readInt(lastPID)
		c, err := spawn(spawnOpts{pids: []int{500}, argv: []string{"exit", "0"}})
		if err != nil {
			return fail("set_tid 500: %v", err)
		}
		reap(c)
		c1, _ := readInt(lastPID)
		d, err := spawn(spawnOpts{argv: []string{"exit", "0"}})
		if err != nil {
			return fail("fork: %v", err)
		}
		reap(d)
		say("f14 %d %d %d %d", c0, c.pid, c1, d.pid)
		return 0
	}
}

// TestF1_4SetTIDLeavesTheCursor: clone3 set_tid does not move ns_last_pid.
func TestF1_4SetTIDLeavesTheCursor(t *testing.T) {
	needRoot(t)
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f14")
	r := atois(a.want("f14"))
	if r[1] != 500 || r[2] >= 500 || r[3] >= 500 {
		t.Errorf("cursor %d, set_tid child %d, cursor after %d, next fork %d: want the cursor and the next fork below 500", r[0], r[1], r[2], r[3])
	}
	a.stop()
}

func init() {
	roles["f15"] = func(args []string) int {
		max, _ := readInt("/proc/sys/kernel/pid_max")
		_, e1 := spawn(spawnOpts{pids: []int{100000}, argv: []string{"exit", "0"}})
		w := writeFile("/proc/sys/kernel/pid_max", "50000")
		max2, _ := readInt("/proc/sys/kernel/pid_max")
		_, e2 := spawn(spawnOpts{pids: []int{60000}, argv: []string{"exit", "0"}})
		say("f15 %d %s %s %d %s", max, errName(e1), w, max2, errName(e2))
		return 0 // the namespace dies with its init: the children go too
	}
}

// TestF1_5PidMaxIsPerNamespace: a new namespace has its own pid_max
// (4194304), independent of the host's, which it may lower; set_tid is
// bounded by the pid_max of each level.
func TestF1_5PidMaxIsPerNamespace(t *testing.T) {
	needRoot(t)
	host, err := readInt("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	a := mustStart(t, spawnOpts{flags: unix.CLONE_NEWPID}, "f15")
	r := a.want("f15")
	if atoi(r[0]) != 4194304 {
		t.Errorf("a new namespace's pid_max is %s (host %d), want 4194304", r[0], host)
	}
	if r[1] != "ok" {
		t.Errorf("set_tid {100000} in the new namespace: %s, want ok", r[1])
	}
	if r[2] != "ok" || atoi(r[3]) != 50000 {
		t.Errorf("lowering the namespace's pid_max to 50000: %s, now %s", r[2], r[3])
	}
	if r[4] != "EINVAL" {
		t.Errorf("set_tid {60000} above the lowered pid_max: %s, want EINVAL", r[4])
	}
	a.stop()
	if now, _ := readInt("/proc/sys/kernel/pid_max"); now != host {
		t.Errorf("host pid_max changed to %d", now)
	}
	// At level 0, a pid >= the host's pid_max is refused.
	if _, err := spawn(spawnOpts{pids: []int{host}, argv: []string{"exit", "0"}}); err != unix.EINVAL {
		t.Errorf("set_tid {host pid_max %d}: %v, want EINVAL", host, err)
	}
}
