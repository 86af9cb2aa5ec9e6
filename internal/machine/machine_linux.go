// Package machine makes nsinit the /init of a whole (virtual) machine.
package machine

// Machine init: nsinit as the /init of a whole (virtual) machine.
//
// The kernel starts /init with almost nothing: no /proc, /sys or /dev
// mounted, argv = ["/init"] plus the command-line words it did not
// recognise, and an environment of HOME=/ TERM=linux plus the unknown
// KEY=VALUE words. An init that exits panics the kernel. Init
// bridges that world and the ordinary PID-1 supervisor:
//
//   - Detection. The machine's init is PID 1 of the initial pid namespace.
//     Only there is pid 2 kthreadd, a kernel thread (PF_KTHREAD in
//     /proc/2/stat); no task of a container's pid namespace can be one.
//     The check trusts only a procfs of our own pid namespace (/proc/self
//     is "1"): a container's PID 1 often sees its parent's /proc, where pid
//     2 is the host's kthreadd, and its own low pids are taken by the Go
//     runtime's threads. If /proc is not mounted yet it is mounted to
//     check, and unmounted again if the answer is "container".
//   - Mounts. machineMounts: proc, sysfs, devtmpfs (the Debian kernel does
//     not mount it itself), devpts, tmpfs on /tmp and /run, cgroup2, and
//     tracefs, debugfs and bpffs for eBPF. A failed optional mount is
//     logged and tolerated: the tests needing it then skip or fail with
//     their own reason.
//   - Command. If /etc/nsinit/cmd exists it holds nsinit's arguments
//     (options, "--", CMD, ARGS...), NUL separated; they replace what the
//     kernel passed. /etc/nsinit/env (NUL or newline separated KEY=VALUE)
//     is added to the environment. PATH defaults to /bin:/sbin:/usr/bin:/usr/sbin.
//   - Finish. sync, then "NSINIT-DONE status=N" on /dev/ttyS1 (a serial
//     port kept free of kernel noise for results) and on the console, then
//     the status to the isa-debug-exit port when the kernel command line
//     has nsinit.debugexit=PORT, then power-off. PID 1 never returns from
//     finish.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"golang.org/x/sys/unix"
)

const (
	// MachineCmdFile holds nsinit's arguments, NUL separated.
	MachineCmdFile = "/etc/nsinit/cmd"
	// MachineEnvFile holds extra KEY=VALUE environment entries.
	MachineEnvFile = "/etc/nsinit/env"
	// DoneMarker starts the line finish writes: "NSINIT-DONE status=N".
	DoneMarker = "NSINIT-DONE"
	// ResultPort is the serial port that carries the done marker.
	ResultPort = "/dev/ttyS1"
	// DebugExitParam on the kernel command line names the isa-debug-exit
	// I/O port (e.g. nsinit.debugexit=0xf4) to write the status to.
	DebugExitParam = "nsinit.debugexit"
)

// pfKthread is PF_KTHREAD of include/linux/sched.h, flags field of /proc/PID/stat.
const pfKthread = 0x00200000

// mountPoint is one file system the machine init mounts.
type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	optional               bool // failure is logged, not fatal
}

func (m mountPoint) String() string {
	return fmt.Sprintf("mount -t %s -o %#x,%s %s %s", m.fstype, m.flags, m.data, m.source, m.target)
}

const (
	nsd  = unix.MS_NOSUID | unix.MS_NODEV
	nsde = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
)

var machineMounts = []mountPoint{
	{"proc", "/proc", "proc", nsde, "", false},
	{"sysfs", "/sys", "sysfs", nsde, "", false},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", false},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", true},
	{"tmpfs", "/dev/shm", "tmpfs", nsd, "mode=1777", true},
	{"tmpfs", "/tmp", "tmpfs", nsd, "mode=1777", false},
	{"tmpfs", "/run", "tmpfs", nsd, "mode=0755", true},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nsde, "", true},
	{"tracefs", "/sys/kernel/tracing", "tracefs", nsde, "", true},
	{"debugfs", "/sys/kernel/debug", "debugfs", nsde, "", true},
	{"bpf", "/sys/fs/bpf", "bpf", nsde, "mode=0700", true},
}

// Init prepares the machine when nsinit is the init of the whole
// machine, and returns the arguments to run and a finish function that
// powers the machine off with the final status. Must be called by PID 1
// before anything else touches /proc (cilium/ebpf caches a missing /proc).
//
// For the PID 1 of a container (or any other process) it returns args
// unchanged and a nil finish. When it is the machine's init, finish is
// non-nil even if err is not, so the caller can still power off with a
// failure status instead of panicking the kernel.
func Init(args []string) (newArgs []string, finish func(status int), err error) {
	machine, err := isMachineInit()
	if err != nil {
		return args, nil, fmt.Errorf("machine init: detect: %w", err)
	}
	if !machine {
		return args, nil, nil
	}
	finish = powerOff
	for _, m := range machineMounts {
		if err := mountOnce(m); err != nil {
			if !m.optional {
				return args, finish, fmt.Errorf("machine init: %w", err)
			}
			fmt.Fprintf(os.Stderr, "nsinit: machine init: %v (continuing without it)\n", err)
		}
	}
	if err := loadEnv(MachineEnvFile); err != nil {
		return args, finish, fmt.Errorf("machine init: %w", err)
	}
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	}
	newArgs, err = loadCmd(MachineCmdFile, args)
	if err != nil {
		return args, finish, fmt.Errorf("machine init: %w", err)
	}
	return newArgs, finish, nil
}

// isMachineInit reports whether this process is PID 1 of the initial pid
// namespace (see the package comment of this file for the rule).
func isMachineInit() (bool, error) {
	if unix.Getpid() != 1 {
		return false, nil
	}
	// A procfs of another pid namespace (a container init started with its
	// parent's /proc) cannot answer for ours, and low pids such as 2 may be
	// our own Go runtime threads: only a procfs where we are "self" = 1 is
	// trusted. A machine's init never has another namespace's /proc.
	if self, err := os.Readlink("/proc/self"); err == nil && self != "1" {
		return false, nil
	}
	mounted := false
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		if err := os.MkdirAll("/proc", 0o555); err != nil {
			return false, fmt.Errorf("create /proc: %w", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", nsde, ""); err != nil {
			return false, fmt.Errorf("mount proc to check pid 2: %w", err)
		}
		mounted = true
	}
	kthread, err := IsKernelThread("/proc", 2)
	if err != nil || !kthread {
		if mounted {
			unix.Unmount("/proc", unix.MNT_DETACH)
		}
		// pid 2 vanished or is unreadable: not the machine's kthreadd.
		return false, nil
	}
	return true, nil
}

// IsKernelThread reports whether task pid, read through the procfs mounted
// at procRoot, is a kernel thread (PF_KTHREAD set in /proc/PID/stat).
func IsKernelThread(procRoot string, pid int) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", procRoot, pid))
	if err != nil {
		return false, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	st, err := procfs.ParseStat(b)
	if err != nil {
		return false, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st.Flags&pfKthread != 0, nil
}

// mountOnce mounts m unless something is mounted at its target already
// (isMachineInit may have mounted /proc).
func mountOnce(m mountPoint) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return fmt.Errorf("%s: create mount point: %w", m, err)
	}
	if isMountPoint(m.target) {
		return nil
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

// isMountPoint compares the device of dir with its parent's; good enough
// for the fresh machine this runs on (no bind mounts yet).
func isMountPoint(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(dir+"/..", &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// loadCmd returns the NUL-separated arguments of file, or args when the
// file does not exist.
func loadCmd(file string, args []string) ([]string, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return args, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read command: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, fmt.Errorf("command file %s is empty", file)
	}
	return strings.Split(string(b), "\x00"), nil
}

// loadEnv adds the KEY=VALUE entries of file (NUL or newline separated)
// to the environment. A missing file is not an error.
func loadEnv(file string) error {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read environment: %w", err)
	}
	for _, kv := range strings.FieldsFunc(string(b), func(r rune) bool { return r == 0 || r == '\n' }) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("environment file %s: entry %q is not KEY=VALUE", file, kv)
		}
		os.Setenv(k, v)
	}
	return nil
}

// powerOff is the machine init's finish: it never returns.
func powerOff(status int) {
	unix.Sync()
	line := fmt.Sprintf("%s status=%d\n", DoneMarker, status)
	if f, err := os.OpenFile(ResultPort, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		f.WriteString(line)
		f.Close() // close waits for the UART to drain
	}
	os.Stderr.WriteString(line)
	if port, ok := debugExitPort(); ok {
		if f, err := os.OpenFile("/dev/port", os.O_WRONLY, 0); err == nil {
			f.WriteAt([]byte{byte(status)}, port)
			f.Close()
		}
	}
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Fprintf(os.Stderr, "nsinit: machine init: power off: %v; halting here\n", err)
	// PID 1 must not exit (the kernel would panic) and a bare select{}
	// is a fatal deadlock in Go: sleep on a real timer.
	for {
		time.Sleep(time.Hour)
	}
}

// debugExitPort returns the isa-debug-exit port named on the kernel
// command line, if any.
func debugExitPort() (int64, bool) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return 0, false
	}
	return parseDebugExit(string(b))
}

func parseDebugExit(cmdline string) (int64, bool) {
	s := bufio.NewScanner(strings.NewReader(cmdline))
	s.Split(bufio.ScanWords)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), DebugExitParam+"="); ok {
			p, err := strconv.ParseInt(v, 0, 64)
			if err == nil && p > 0 && p < 0x10000 {
				return p, true
			}
		}
	}
	return 0, false
}
