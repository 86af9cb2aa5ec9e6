package restorer

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// Capability sets of the exec payload. The builder is root with every
// capability in the task's final user namespace; before the execve it puts
// the image's bounding, inheritable and ambient sets in place (setCreds in
// builder_creds_linux.go), and the kernel's exec rules (capabilities(7)) then compute
// the permitted and effective sets: for a root target every cap of
// bounding|inheritable, for a non-root target without file capabilities the
// ambient set. An image whose permitted or effective set cannot come out of
// such an exec (a task that dropped capabilities itself after its own exec)
// is restored with what the exec gives, and `nsinit check` names the
// difference. Capabilities are bits relative to the task's own user
// namespace, so the image's sets need no translation. A zombie and a
// stopped payload do not exec: their builders also set permitted and
// effective as they are.

// taskCaps is what a task's builder sets: ok is false when the image
// records no capability state at all (all five sets zero: hand-written
// images), which leaves the builder's own. last is the running kernel's
// cap_last_cap.
type taskCaps struct {
	ok            bool
	keep          bool // PR_SET_KEEPCAPS across setresuid: ambient caps to raise
	inh, bnd, amb uint64
	last          uint
	// exact: a zombie or a stopped payload, which does not exec:
	// permitted and effective are set as they are (within what the
	// builder has).
	exact    bool
	prm, eff uint64
}

// capsOf is task ti's taskCaps on a kernel whose cap_last_cap is last.
func capsOf(p *Plan, ti int, last uint) (taskCaps, error) {
	t := &p.Tree.Tasks[ti]
	c := t.Creds
	if c.CapInh|c.CapPrm|c.CapEff|c.CapBnd|c.CapAmb == 0 {
		return taskCaps{}, nil
	}
	valid := capMask(last)
	// Caps this kernel does not know cannot be inheritable or ambient; in
	// the bounding set they are meaningless, since no exec can grant them.
	if extra := (c.CapInh | c.CapAmb) &^ valid; extra != 0 {
		return taskCaps{}, fmt.Errorf("task %v: inheritable/ambient capabilities %#x beyond this kernel's cap_last_cap %d: %w", t.PIDs, extra, last, ErrUnsupported)
	}
	tc := taskCaps{ok: true, keep: c.CapAmb != 0, inh: c.CapInh, bnd: c.CapBnd & valid, amb: c.CapAmb}
	if t.State == pstree.Zombie || p.Options.Payload == PayloadStopped {
		// no exec follows: permitted and effective as they are
		tc.exact, tc.keep, tc.prm, tc.eff = true, true, c.CapPrm, c.CapEff
	}
	return tc, nil
}

// capMask has a bit for every capability up to last (cap_last_cap).
func capMask(last uint) uint64 {
	if last >= 63 {
		return ^uint64(0)
	}
	return uint64(1)<<(last+1) - 1
}

var capLast struct {
	once sync.Once
	n    uint
	err  error
}

// capLastCap is the highest capability number of the running kernel, read
// once.
func capLastCap() (uint, error) {
	capLast.once.Do(func() {
		b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
		if err != nil {
			capLast.err = fmt.Errorf("read cap_last_cap: %w", err)
			return
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 8)
		if err != nil || n > 63 {
			capLast.err = fmt.Errorf("cap_last_cap %q: not a capability number", b)
			return
		}
		capLast.n = uint(n)
	})
	return capLast.n, capLast.err
}

// taskCapsOf is capsOf for the running kernel.
func taskCapsOf(p *Plan, ti int) (taskCaps, error) {
	last, err := capLastCap()
	if err != nil {
		return taskCaps{}, err
	}
	c, err := capsOf(p, ti, last)
	c.last = last
	return c, err
}

// put fills the builder's record.
func (c taskCaps) put(r *procRec) {
	if !c.ok {
		return
	}
	r.setCaps, r.capLast = 1, uint32(c.last)
	if c.keep {
		r.keepCaps = 1
	}
	if c.exact {
		r.capExact = 1
	}
	r.capInh, r.capBnd, r.capAmb, r.capPrm, r.capEff = c.inh, c.bnd, c.amb, c.prm, c.eff
}

// procCreds are the credentials a builder takes: before the exec payload,
// before it dies as a zombie, or before it parks as a stopped payload.
type procCreds struct {
	set       bool
	uid, gid  [3]uint32
	groups    []uint32
	setgroups bool
	caps      taskCaps
}

// credsOf is what task ti's builder sets; self is the restorer's own
// status, whose credentials its builders start with unless b says the
// builder switched them (switchedIDs).
func credsOf(p *Plan, ti int, self *procfs.Status, b builderIDs) (procCreds, error) {
	c := procCreds{set: true}
	var err error
	if c.uid, c.gid, c.groups, c.setgroups, err = taskCreds(p, ti); err != nil {
		return c, err
	}
	uids, gids := [3]uint32{b.uid, b.uid, b.uid}, [3]uint32{b.gid, b.gid, b.gid}
	if !b.switched {
		ru, eu, su := unix.Getresuid()
		rg, eg, sg := unix.Getresgid()
		uids, gids = [3]uint32{uint32(ru), uint32(eu), uint32(su)}, [3]uint32{uint32(rg), uint32(eg), uint32(sg)}
	}
	if err := keptIDs(p, ti, uids, gids); err != nil {
		return c, err
	}
	if c.caps, err = taskCapsOf(p, ti); err != nil {
		return c, err
	}
	if ns := p.Tree.Namespace(p.Tree.Tasks[ti].NS[pstree.UserNS]); (ns == nil || ns.Ambient) && c.heldBy(self) {
		c.set = false
	}
	return c, nil
}

// heldBy reports whether a process with status self already has every
// credential c gives. A builder in the restorer's own user namespace is
// a clone of the restorer, so it then has nothing to set: the usual case of
// a tree that kept its creator's credentials, and the only way to restore
// one where the restorer lacks CAP_SETGID and CAP_SETPCAP (a container's
// default capabilities), since setgroups(2) and PR_CAPBSET_DROP need them
// even when they change nothing.
func (c *procCreds) heldBy(self *procfs.Status) bool {
	if self == nil || [3]uint32(self.UID[:3]) != c.uid || [3]uint32(self.GID[:3]) != c.gid {
		return false
	}
	if c.setgroups && !slices.Equal(sorted(self.Groups), sorted(c.groups)) {
		return false
	}
	k := c.caps
	if !k.ok {
		return true
	}
	same := self.CapInh == k.inh && self.CapBnd&capMask(k.last) == k.bnd && self.CapAmb == k.amb
	if k.exact { // no exec follows to compute permitted and effective
		same = same && self.CapPrm == k.prm && self.CapEff == k.eff
	}
	return same
}

// sorted is a sorted copy of ids (the kernel keeps supplementary groups
// sorted, an image need not).
func sorted(ids []uint32) []uint32 {
	s := slices.Clone(ids)
	slices.Sort(s)
	return s
}

// put fills the builder's record; groups is the address of the groups in
// the block.
func (c *procCreds) put(r *procRec, groups uint64) {
	if !c.set {
		return
	}
	r.groups, r.ngroups = groups, int64(len(c.groups))
	r.uid, r.gid = c.uid, c.gid
	if !c.setgroups {
		r.noGroups = 1
	}
	c.caps.put(r)
	r.setCreds = 1
}
