package restorer

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// credTree: tasks whose credentials differ in every field, each with
// threads: root with every capability; a non-root task whose real,
// saved ids differ from its real and effective ones (which stay equal:
// busybox, the payload, drops an effective id that differs from the real
// one), with supplementary groups and an ambient capability; root without sys_admin in its bounding set, with an
// inheritable cap; a zombie with other ids.
func credTree() *pstree.Tree {
	full := ownBounding() // root here may lack some (CAP_SYS_RESOURCE on the dev machine)
	const netRaw, kill, sysAdmin = 1 << 13, 1 << 5, 1 << 21
	b := newTB()
	root := b.task(1, []int{23000}, 0, []int{23000}, []int{23000})
	root.Creds = pstree.Creds{CapPrm: full, CapEff: full, CapBnd: full}
	root.Threads = []pstree.Thread{{TIDs: []int{23001}}}
	a := b.task(1, []int{23002}, 23000, []int{23000}, []int{23000})
	a.Creds = pstree.Creds{UID: 1000, EUID: 1000, SUID: 1002, FSUID: 1000, GID: 2000, EGID: 2000, SGID: 2002, FSGID: 2000,
		Groups: []uint32{5, 6, 2000}, CapInh: netRaw, CapPrm: netRaw, CapEff: netRaw, CapAmb: netRaw, CapBnd: full}
	a.Threads = []pstree.Thread{{TIDs: []int{23003}}, {TIDs: []int{23004}}}
	r := b.task(1, []int{23005}, 23000, []int{23000}, []int{23000})
	r.Creds = pstree.Creds{Groups: []uint32{7}, CapInh: kill, CapPrm: full &^ sysAdmin, CapEff: full &^ sysAdmin, CapBnd: full &^ sysAdmin}
	r.Threads = []pstree.Thread{{TIDs: []int{23006}}}
	z := b.task(1, []int{23007}, 23000, []int{23000}, []int{23000})
	z.State, z.ExitStatus = pstree.Zombie, 3<<8
	z.Creds = pstree.Creds{UID: 1003, EUID: 1003, SUID: 1003, FSUID: 1003, GID: 1003, EGID: 1003, SGID: 1003, FSGID: 1003, CapBnd: full}
	return &b.tr
}

// TestRestoreCreds restores credTree in both payloads and placements and
// reads every task's and (stopped payload) every thread's credentials
// from the host procfs (checkCreds): the stopped payload must bring back
// what the exec payload does (issue #12).
func TestRestoreCreds(t *testing.T) { scenarioCheck(t, credTree, checkCreds) }

// checkCreds compares /proc/PID/status - and /proc/PID/task/TID/status of
// every thread with the stopped payload - with each task's image
// credentials: Uid, Gid (real, effective, saved, fs), Groups and the five
// capability sets (when the image records them: not all zero).
func checkCreds(t *testing.T, tr *pstree.Tree, pay Payload) {
	t.Helper()
	for _, tk := range tr.Tasks {
		paths := []string{fmt.Sprintf("/proc/%d/status", tk.PID())}
		if pay == PayloadStopped && tk.State != pstree.Zombie {
			for _, th := range tk.Threads {
				paths = append(paths, fmt.Sprintf("/proc/%d/task/%d/status", tk.PID(), th.TIDs[0]))
			}
		}
		c := expectedCreds(tk, pay)
		want := map[string]string{
			"Uid":    fmt.Sprintf("%d %d %d %d", c.UID, c.EUID, c.SUID, c.FSUID),
			"Gid":    fmt.Sprintf("%d %d %d %d", c.GID, c.EGID, c.SGID, c.FSGID),
			"Groups": joinU32(c.Groups),
		}
		if c.CapInh|c.CapPrm|c.CapEff|c.CapBnd|c.CapAmb != 0 {
			for k, v := range map[string]uint64{"CapInh": c.CapInh, "CapPrm": c.CapPrm, "CapEff": c.CapEff, "CapBnd": c.CapBnd, "CapAmb": c.CapAmb} {
				want[k] = fmt.Sprintf("%016x", v)
			}
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("task %v: %v", tk.PIDs, err)
				continue
			}
			for k, v := range want {
				if got := strings.Join(strings.Fields(procfs.StatusField(b, k)), " "); got != v {
					t.Errorf("%s (task %v, %v): %s %q, image %q", p, tk.PIDs, tk.State, k, got, v)
				}
			}
		}
	}
}

// ownBounding is the test process's bounding set: what a restored task
// can have.
func ownBounding() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	v, err := strconv.ParseUint(procfs.StatusField(b, "CapBnd"), 16, 64)
	if err != nil {
		return testutil.FullCapSet()
	}
	return v
}

// expectedCreds are the credentials a restored task shows: the image's,
// but after the exec payload's execve the saved and fs ids are the
// effective ones (the kernel's exec rule; docs/restore.md).
func expectedCreds(tk pstree.Task, pay Payload) pstree.Creds {
	c := tk.Creds
	if pay == PayloadExec && tk.State != pstree.Zombie {
		c.SUID, c.FSUID, c.SGID, c.FSGID = c.EUID, c.EUID, c.EGID, c.EGID
	}
	return c
}

func joinU32(v []uint32) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatUint(uint64(x), 10)
	}
	return strings.Join(s, " ")
}

// TestCredsHeldBy: a builder that already has a task's credentials (a
// clone of a restorer with the same ids, groups and capability sets) sets
// nothing; any difference, of one id, group or capability set, and it
// sets them all. Permitted and effective count only where no exec follows.
func TestCredsHeldBy(t *testing.T) {
	const last = 40
	all := uint64(1)<<(last+1) - 1
	self := procfs.Status{UID: [4]uint32{5, 5, 5, 5}, GID: [4]uint32{6, 6, 6, 6}, Groups: []uint32{7, 8},
		CapPrm: 0x20, CapEff: 0x20, CapBnd: all, CapInh: 0, CapAmb: 0}
	held := func() procCreds {
		return procCreds{set: true, uid: [3]uint32{5, 5, 5}, gid: [3]uint32{6, 6, 6}, groups: []uint32{8, 7}, setgroups: true,
			caps: taskCaps{ok: true, bnd: all, last: last}}
	}
	for name, c := range map[string]struct {
		edit func(*procCreds)
		want bool
	}{
		"same":                      {func(*procCreds) {}, true},
		"no capability state":       {func(c *procCreds) { c.caps = taskCaps{} }, true},
		"setgroups denied":          {func(c *procCreds) { c.groups, c.setgroups = nil, false }, true},
		"exec computes permitted":   {func(c *procCreds) { c.caps.prm = 1 }, true},
		"saved uid":                 {func(c *procCreds) { c.uid[2] = 0 }, false},
		"egid":                      {func(c *procCreds) { c.gid[1] = 0 }, false},
		"a group fewer":             {func(c *procCreds) { c.groups = c.groups[:1] }, false},
		"bounding":                  {func(c *procCreds) { c.caps.bnd &^= 1 << 21 }, false},
		"inheritable":               {func(c *procCreds) { c.caps.inh = 1 }, false},
		"ambient":                   {func(c *procCreds) { c.caps.amb = 1 }, false},
		"zombie, same sets":         {func(c *procCreds) { c.caps.exact, c.caps.prm, c.caps.eff = true, 0x20, 0x20 }, true},
		"zombie, another effective": {func(c *procCreds) { c.caps.exact, c.caps.prm = true, 0x20 }, false},
	} {
		pc := held()
		c.edit(&pc)
		if got := pc.heldBy(&self); got != c.want {
			t.Errorf("%s: heldBy = %v, want %v", name, got, c.want)
		}
	}
}
