package pstree

// Limits Validate enforces. An image is untrusted input: each bound is the
// kernel's own where it has one (nothing beyond it could have been dumped,
// or restored), else a generous size no real tree reaches, so that every
// consumer (show, check, the planner, the fuzzer) stays fast on any image.
// docs/image-format.md lists them with their reasons.
const (
	// MaxLevel is the deepest pid namespace level Linux allows
	// (MAX_PID_NS_LEVEL): a task has at most MaxLevel+1 pids. User
	// namespaces nest as deep (create_user_ns: EUSERS past level 32).
	MaxLevel = 32
	// MaxPID is the largest pid the kernel ever hands out (PID_MAX_LIMIT
	// on 64-bit, the ceiling of /proc/sys/kernel/pid_max).
	MaxPID = 4 << 20
	// MaxTasks and MaxThreads bound the processes and the non-leader
	// threads of one image: the dump of 10,000 tasks is the largest the
	// project measures.
	MaxTasks   = 1 << 16
	MaxThreads = 1 << 16
	// MaxNamespaces bounds the namespaces of one image: eight kinds for
	// every task would be 8*MaxTasks, far beyond any real tree.
	MaxNamespaces = 1 << 16
	// MaxGroups is NGROUPS_MAX: setgroups(2) takes no more.
	MaxGroups = 65536
	// MaxMapLines is UID_GID_MAP_MAX_EXTENTS: a uid_map or gid_map
	// holds at most 340 lines.
	MaxMapLines = 340
	// MaxArgBytes bounds argv plus env of one task, each string counted
	// with its terminating NUL: execve(2) refuses more than 3/4 of the
	// 8 MiB _STK_LIM (fs/exec.c, bprm_stack_limits), whatever the rlimit.
	MaxArgBytes = 6 << 20
	// MaxPath is PATH_MAX: the longest exe, cwd or root readlink(2) on
	// /proc returns.
	MaxPath = 4096
	// InvalidID is (uid_t)-1: no task can have it (setresuid(2) reads it
	// as "leave unchanged") and no id map can cover it.
	InvalidID = 1<<32 - 1
	// maxSignal is the highest signal number (_NSIG): a zombie killed by
	// a signal carries 1..maxSignal.
	maxSignal = 64
	// maxComm is TASK_COMM_LEN-1: the bytes of a command name.
	maxComm = 15
)
