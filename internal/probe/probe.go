// Package probe asks the running kernel, and the caller's credentials, for
// each thing dump and restore depend on: `nsinit check` with no tree prints
// them (as `criu check` does), and restore asks the same functions before
// planning. Every probe is read-only or undoes what it did; none leaves a
// process, a file or a changed setting behind.
//
// Nothing here runs at package load: the init path (nsinit as PID 1)
// imports this package through cmd/nsinit and must not pay for it.
package probe

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"github.com/nsinit/nsinit/internal/nsthread"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// Result is one probe's answer.
type Result struct {
	Name  string `json:"name"`
	Works bool   `json:"works"`
	// Detail is the value found (pid_max, a limit) or why the piece is
	// missing.
	Detail string `json:"detail,omitempty"`
	// Disables says what does not work without the piece.
	Disables string `json:"disables"`
	// Required: a default dump (checked by eBPF) or a restore cannot run
	// without it. Optional pieces have a fallback or concern some trees
	// only.
	Required bool `json:"required"`
	// Permission: the piece is missing because the caller lacks a
	// capability or a permission, not because the kernel lacks it.
	Permission bool `json:"permission,omitempty"`
}

// All runs every probe, in a fixed order.
func All() []Result {
	var out []Result
	out = append(out, setTIDResults()...)
	out = append(out, pidfdResults()...)
	out = append(out, lastPIDResult(), freezeResult())
	out = append(out, btfResults()...)
	out = append(out, capResults()...)
	out = append(out, userNSResults()...)
	out = append(out, pidMaxResult())
	return out
}

// result fills Works, Detail and Permission from err.
func result(name string, required bool, disables string, err error) Result {
	r := Result{Name: name, Works: err == nil, Disables: disables, Required: required}
	if err != nil {
		r.Detail = err.Error()
		r.Permission = errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES)
	}
	return r
}

// SetTID says whether clone3 takes set_tid entries for two pid namespace
// levels (docs/kernel.md F2.1): nil when it does. The probe creates
// nothing: it asks for pid 1 of a new namespace and pid 1 at the caller's
// own level, which is always taken (the caller's namespace has an init), so
// a kernel that takes two entries fails in pid allocation with EEXIST, one
// that takes a single entry fails the argument check with EINVAL, one
// without clone3 with ENOSYS, one whose clone3 has no set_tid (before 5.5)
// with E2BIG, and a caller without CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN
// with EPERM.
func SetTID() error {
	tids := [2]int32{1, 1} // pid_t, innermost first: pid 1 of the new ns, pid 1 here
	args := sys.CloneArgs{
		Flags:      sys.CLONE_NEWPID,
		ExitSignal: uint64(unix.SIGCHLD),
		SetTID:     uint64(uintptr(unsafe.Pointer(&tids[0]))),
		SetTIDSize: 2,
	}
	r, _, e := syscall.RawSyscall(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&args)), sys.CloneArgsSize, 0)
	switch {
	case e == unix.EEXIST:
		return nil
	case e != 0:
		return e
	case r == 0:
		// Cannot happen (pid 1 is taken); never run Go code in a child.
		syscall.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	default:
		var ws unix.WaitStatus
		unix.Kill(int(r), unix.SIGKILL)
		unix.Wait4(int(r), &ws, 0, nil)
	}
	return errors.New("clone3 created a task with a taken pid")
}

func setTIDResults() []Result {
	err := SetTID()
	var clone3Err error
	switch {
	case errors.Is(err, unix.ENOSYS):
		clone3Err = fmt.Errorf("no clone3 (Linux 5.3+): %w", err)
	case errors.Is(err, unix.E2BIG):
		clone3Err = fmt.Errorf("clone3 without set_tid (Linux 5.5+): %w", err)
	case errors.Is(err, unix.EPERM):
		clone3Err = fmt.Errorf("set_tid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN: %w", err)
	}
	multi := err
	if err != nil && clone3Err == nil {
		multi = fmt.Errorf("one set_tid level only (Linux 5.5+ takes one a level): %w", err)
	} else if clone3Err != nil {
		multi = clone3Err
	}
	return []Result{
		result("clone3 set_tid", true, "restore: choosing a task's pid", clone3Err),
		result("multi-level set_tid", false, "restore: one clone per task at every level (falls back to ns_last_pid cursors, --placement ns_last_pid)", multi),
	}
}

// Pidfd says whether pidfd_open works: nil when it does.
func Pidfd() error {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open (Linux 5.3+): %w", err)
	}
	unix.Close(fd)
	return nil
}

// PidfdSetns says whether setns(2) takes a pidfd (Linux 5.8+): nil when
// it does. It joins the caller's own uts namespace through its own pidfd
// on a locked thread, which changes nothing; a kernel without pidfd setns
// says EINVAL, a caller without CAP_SYS_ADMIN EPERM.
func PidfdSetns() error {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	err = nsthread.In(fd, unix.CLONE_NEWUTS, func() error { return nil })
	switch {
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("setns does not take a pidfd (Linux 5.8+): %w", err)
	case err != nil:
		return fmt.Errorf("setns through a pidfd: %w", err)
	}
	return nil
}

func pidfdResults() []Result {
	return []Result{
		result("pidfd_open", true, "restore: waiting for and checking the tasks it creates", Pidfd()),
		result("pidfd setns", true, "restore: tasks joining the namespaces of another task", PidfdSetns()),
	}
}

// LastPIDWritable says whether the caller may write the cursor of its
// pid namespace (docs/kernel.md F1.2): nil when it may. It writes back the
// value it read: a fork in between may have moved the cursor on, and then
// moves back by that much, which harms nobody (the kernel skips pids in
// use, F1.3, and a restore checks every pid it placed through the cursor).
func LastPIDWritable() error {
	v, err := procfs.ReadLastPID()
	if err != nil {
		return err
	}
	if err := procfs.WriteLastPID(v); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w (needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)", err)
		}
		return err
	}
	return nil
}

func lastPIDResult() Result {
	return result("ns_last_pid writable", true, "restore: each namespace's next pid, pid placement on kernels without multi-level set_tid", LastPIDWritable())
}

// CgroupFreeze says whether cgroup v2 with cgroup.freeze (Linux 5.2+) is
// mounted: nil when it is. Only the root cgroup has no cgroup.freeze, so
// it looks in the caller's own cgroup, else in the children of the root,
// else in an empty child cgroup it makes and removes.
func CgroupFreeze() error {
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		return err
	}
	if own, err := procfs.New("").Cgroup2(os.Getpid()); err == nil && own != "" && own != "/" {
		if _, err := os.Stat(mnt + own + "/cgroup.freeze"); err == nil {
			return nil
		}
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(mnt + "/" + e.Name() + "/cgroup.freeze"); err == nil {
			return nil
		}
	}
	// No child cgroup has it (or there is none): make one, look, remove it.
	dir := fmt.Sprintf("%s/nsinit-probe-%d", mnt, os.Getpid())
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("no cgroup below %s to look at, and cannot make one: %w", mnt, err)
	}
	defer os.Remove(dir)
	if _, err := os.Stat(dir + "/cgroup.freeze"); err != nil {
		return fmt.Errorf("no cgroup.freeze in the cgroups of %s (Linux 5.2+)", mnt)
	}
	return nil
}

func freezeResult() Result {
	return result("cgroup v2 freezer", false, "dump: freezing a tree that has its cgroup to itself in one write (falls back to ptrace)", CgroupFreeze())
}

// The tracepoints the dump guard and `trace` attach to (bpf/trace.bpf.c):
// tp_btf programs need the kernel's BTF typedef btf_trace_<name>.
var guardTracepoints = []string{"sched_process_fork", "sched_process_exit", "sched_process_exec"}

func btfResults() []Result {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		err = fmt.Errorf("kernel BTF (/sys/kernel/btf/vmlinux): %w", err)
		return []Result{
			result("BTF", true, "dump: the eBPF race guard (dump --unchecked only), trace", err),
			result("BPF task iterator", false, "dump: recording child subreapers (the image says unknown)", err),
		}
	}
	var missing []string
	for _, tp := range guardTracepoints {
		if _, err := spec.AnyTypeByName("btf_trace_" + tp); err != nil {
			missing = append(missing, tp)
		}
	}
	var tpErr error
	if len(missing) > 0 {
		tpErr = fmt.Errorf("no BTF for tracepoints %s", strings.Join(missing, ", "))
	}
	var iterErr error
	if _, err := spec.AnyTypeByName("bpf_iter__task"); err != nil {
		iterErr = fmt.Errorf("no task iterator in the kernel's BTF (Linux 5.8+): %w", err)
	}
	return []Result{
		result("BTF", true, "dump: the eBPF race guard (dump --unchecked only), trace", nil),
		result("guard tracepoints", true, "dump: the eBPF race guard (dump --unchecked only), trace", tpErr),
		result("BPF task iterator", false, "dump: recording child subreapers (the image says unknown)", iterErr),
	}
}

// HasCap says whether the calling thread has capability c in its
// effective set.
func HasCap(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(uint(c)%32)) != 0
}

// capNeeds lists the capabilities dump and restore use, with what each
// is for.
var capNeeds = []struct {
	name     string
	caps     []int // any one of them is enough
	required bool
	disables string
}{
	{"CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN", []int{unix.CAP_CHECKPOINT_RESTORE, unix.CAP_SYS_ADMIN}, true, "restore: choosing pids (set_tid, ns_last_pid)"},
	{"CAP_SYS_ADMIN", []int{unix.CAP_SYS_ADMIN}, false, "restore: creating namespaces, setting hostnames, joining namespaces"},
	{"CAP_SYS_PTRACE", []int{unix.CAP_SYS_PTRACE}, true, "dump: reading other users' tasks, the ptrace freeze"},
	{"CAP_BPF", []int{unix.CAP_BPF}, true, "dump: the eBPF race guard (dump --unchecked only), trace"},
	{"CAP_PERFMON", []int{unix.CAP_PERFMON}, true, "dump: attaching the guard's tracepoints (dump --unchecked only), trace"},
	{"CAP_SETUID and CAP_SETGID", []int{-1, unix.CAP_SETUID, unix.CAP_SETGID}, false, "restore: tasks with other ids than the restorer's"},
	{"CAP_SETPCAP", []int{unix.CAP_SETPCAP}, false, "restore: tasks with fewer capabilities (bounding set)"},
	{"CAP_NET_ADMIN", []int{unix.CAP_NET_ADMIN}, false, "restore: net namespace interfaces, addresses and routes"},
	{"CAP_KILL", []int{unix.CAP_KILL}, false, "dump --kill and rollbacks of other users' tasks"},
}

func capResults() []Result {
	var out []Result
	for _, n := range capNeeds {
		ok := false
		if n.caps[0] == -1 { // all of the rest
			ok = true
			for _, c := range n.caps[1:] {
				ok = ok && HasCap(c)
			}
		} else {
			for _, c := range n.caps {
				ok = ok || HasCap(c)
			}
		}
		var err error
		if !ok {
			err = fmt.Errorf("not in the effective set: %w", unix.EPERM)
		}
		out = append(out, result(n.name, n.required, n.disables, err))
	}
	return out
}

// userNSResults: the kernel's user namespace limit, and whether a user
// without capabilities may create one (Debian's
// kernel.unprivileged_userns_clone and Ubuntu's AppArmor restriction may
// forbid it).
func userNSResults() []Result {
	var limitErr error
	max, err := readInt("/proc/sys/user/max_user_namespaces")
	switch {
	case err != nil:
		limitErr = fmt.Errorf("no user namespaces: %w", err)
	case max == 0:
		limitErr = errors.New("user.max_user_namespaces is 0")
	}
	limit := result("user namespaces", false, "restore: trees with user namespaces", limitErr)
	if limitErr == nil {
		limit.Detail = "max_user_namespaces " + strconv.Itoa(max)
	}
	var unprivErr error
	if v, err := readInt("/proc/sys/kernel/unprivileged_userns_clone"); err == nil && v == 0 {
		unprivErr = errors.New("kernel.unprivileged_userns_clone is 0")
	}
	if v, err := readInt("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"); err == nil && v != 0 {
		unprivErr = errors.New("kernel.apparmor_restrict_unprivileged_userns is set")
	}
	if limitErr != nil {
		unprivErr = limitErr
	}
	return []Result{limit, result("unprivileged user namespaces", false, "dump/restore inside an unprivileged container (unshare -U -r -p), rootless trees", unprivErr)}
}

func pidMaxResult() Result {
	v, err := procfs.PidMax()
	r := result("pid_max", true, "restore: pids at or above it cannot be placed", err)
	if err == nil {
		r.Detail = strconv.Itoa(v)
	}
	return r
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
