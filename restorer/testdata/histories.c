// histories: a random kernel history from a seed (issue 12, item 5).
//
//   histories SEED READY
//
// The first task, the root, drives a random sequence of the operations in
// the table below, each executed by a random task or thread of the tree
// ("actor") with raw system calls. An operation the kernel rejects is
// skipped: the tree is whatever the kernel let the history make. When the
// history is done every thread parks in pause(2), the root stops some
// processes with SIGSTOP, the root writes the file READY and then one byte
// to fd 3 (the caller's event), and parks too.
//
// A process without threads parks as a program of its own ("histories
// park FD", FD its reply pipe), so its capabilities are what an exec gives
// them. A task started again from its program (the exec payload of a
// restore) parks at once: the root finds READY written, the others find no
// FD to reply on.
//
// Actors receive commands through pipes made before the first fork (every
// task inherits them) and a shared anonymous mapping (the arguments, the
// results, the host pid of every actor). Only the root reads the model;
// one operation runs at a time. The root waits for a reply, for a birth, or
// for a pidfd that says an actor died: events, never a sleep.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

// The operations. weight: how often the driver picks it (out of the sum).
enum {
	OP_FORK,       // clone(2) with the flags of forks[var]; the child is a new actor
	OP_THREAD,     // a new thread (CLONE_THREAD, through pthread_create) that is an actor
	OP_UNSHARE,    // unshare(2) with unshares[var]; later forks go to the new pid ns
	OP_SETNS,      // setns into target's pid_for_children (var 0) or pid (var 1)
	OP_SETSID,     // setsid(2)
	OP_SETPGID,    // setpgid(2): see pgids[]
	OP_SUBREAPER,  // prctl(PR_SET_CHILD_SUBREAPER, 1)
	OP_WRITEMAP,   // write uid_map and gid_map of target's user namespace: maps[var]
	OP_SETUID,     // setresgid(0,0,0) and setresuid(0,0,0) for the calling thread
	OP_REAP,       // waitpid(-1, WNOHANG|__WALL): reap one dead child if any
	OP_EXIT,       // _exit(codes[var]): the whole process exits
	OP_KILL,       // tgkill(self, signals[var]): the process dies of a signal
	OP_THREADEXIT, // a non-leader thread exits alone (its children go to a sibling thread)
	OP_STOP,       // (final) the root sends SIGSTOP to a parked process
	OP_PARK,       // (final) pause() forever, as "histories park" when it has no threads
	NOPS
};

static const struct {
	const char *name;
	int weight;
} optab[NOPS] = {
	[OP_FORK] = {"fork", 26},
	[OP_THREAD] = {"thread", 4},
	[OP_UNSHARE] = {"unshare", 5},
	[OP_SETNS] = {"setns", 6},
	[OP_SETSID] = {"setsid", 6},
	[OP_SETPGID] = {"setpgid", 10},
	[OP_SUBREAPER] = {"subreaper", 3},
	[OP_WRITEMAP] = {"writemap", 5},
	[OP_SETUID] = {"setuid", 2},
	[OP_REAP] = {"reap", 3},
	[OP_EXIT] = {"exit", 8},
	[OP_KILL] = {"kill", 4},
	[OP_THREADEXIT] = {"threadexit", 2},
	[OP_STOP] = {"stop", 0},
	[OP_PARK] = {"park", 0},
};

static const struct {
	const char *name;
	long flags;
} forks[] = {
	{"plain", 0},
	{"newpid", CLONE_NEWPID},
	{"newuser|newpid", CLONE_NEWUSER | CLONE_NEWPID},
	{"newuser", CLONE_NEWUSER},
	{"parent", CLONE_PARENT},
	{"parent|newpid", CLONE_PARENT | CLONE_NEWPID},
	{"parent|newuser|newpid", CLONE_PARENT | CLONE_NEWUSER | CLONE_NEWPID},
}, unshares[] = {
	{"newpid", CLONE_NEWPID},
	{"newuser", CLONE_NEWUSER},
	{"newuser|newpid", CLONE_NEWUSER | CLONE_NEWPID},
};

static const char *const setnses[] = {"pid_for_children", "pid"};

// setpgid(who, pgid): who is the caller (0) or one of its children; pgid
// is a new group (0) or the group of another task (a member names it).
static const char *const pgids[] = {"self-new", "self-join", "child-new", "child-join"};

// maps: the outer ids are the writer's; "self" maps the writer's own euid
// (the one map an unprivileged writer may write, after setgroups "deny").
static const char *const maps[] = {"0 100000 65536", "0 0 1", "0 1000 2000", "self"};

static const int codes[] = {0, 1, 3, 42, 127, 200, 255};
static const int signals[] = {SIGKILL, SIGTERM, SIGUSR1, SIGHUP, SIGSEGV, SIGABRT};

#define N(a) (int)(sizeof(a) / sizeof((a)[0]))

static int nvars(int op) {
	switch (op) {
	case OP_FORK:
		return N(forks);
	case OP_UNSHARE:
		return N(unshares);
	case OP_SETNS:
		return N(setnses);
	case OP_SETPGID:
		return N(pgids);
	case OP_WRITEMAP:
		return N(maps);
	case OP_EXIT:
		return N(codes);
	case OP_KILL:
		return N(signals);
	}
	return 1;
}

#define MAXA 40      // actors: processes and threads, dead ones included
#define MAXPROCS 28  // processes
#define MAXTHREADS 8 // threads beside the leaders
#define READY_FD 3
#define MAXLEVEL 40 // pid namespace nesting (the kernel allows 32)

// slot: what an actor and the root share, in the shared mapping.
struct slot {
	int host;              // host pid (tid for a thread)
	int op, var, arg, arg2; // the command: arg and arg2 are slots
	int newslot;           // fork, thread: the slot of the new actor
	int res;               // >= 0, or -errno
};

static struct slot *S;
static int cmdp[MAXA][2], repp[MAXA][2];
static int ready = -1; // the root's READY file

static void die(const char *what) {
	fprintf(stderr, "histories: %s: %s\n", what, strerror(errno));
	_exit(125);
}

static void park(void) {
	for (;;)
		pause();
}

// ---------------------------------------------------------------- actors

// hostid reads the caller's host pid (tid for a thread) from procfs, which
// is the host's: the root driver names every task by it.
static int hostid(int thread) {
	char buf[64] = {0};
	if (readlink(thread ? "/proc/thread-self" : "/proc/self", buf, sizeof buf - 1) < 0)
		die("readlink /proc/self");
	char *t = strrchr(buf, '/');
	return atoi(thread && t ? t + 1 : buf);
}

// field reads entry i of a status field ("NSpid", "NSpgid") of task host;
// with i < 0, the number of entries.
static int field(int host, const char *name, int i) {
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", host);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int n = -1;
	size_t l = strlen(name);
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, name, l) || line[l] != ':')
			continue;
		char *p = line + l + 1, *end;
		n = 0;
		for (;;) {
			long v = strtol(p, &end, 10);
			if (end == p)
				break;
			if (n == i) {
				fclose(f);
				return v;
			}
			n++;
			p = end;
		}
		break;
	}
	fclose(f);
	return i < 0 ? n : -1;
}

// vnr is the number that field name of task host has in the caller's pid
// namespace, or 0 when the caller cannot see the task: the entry at the
// caller's level names it only if a pidfd opened by that number in the
// caller's namespace is the task.
static int vnr(int host, const char *name) {
	int level = field(hostid(1), "NSpid", -1) - 1;
	int n = field(host, "NSpid", level);
	if (level < 0 || n <= 0)
		return 0;
	int fd = syscall(SYS_pidfd_open, n, 0);
	if (fd < 0)
		return 0;
	char path[64], line[128];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "re");
	int same = 0;
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "Pid:", 4) == 0)
			same = atoi(line + 4) == host;
	if (f)
		fclose(f);
	close(fd);
	return same ? field(host, name, level) : 0;
}

static int writefile(const char *path, const char *s) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = write(fd, s, strlen(s)) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int writemap(int host, int var) {
	char path[64], m[64];
	if (strcmp(maps[var], "self") == 0) {
		snprintf(path, sizeof path, "/proc/%d/setgroups", host);
		writefile(path, "deny");
		snprintf(m, sizeof m, "0 %d 1", (int)geteuid());
	} else {
		snprintf(m, sizeof m, "%s", maps[var]);
	}
	snprintf(path, sizeof path, "/proc/%d/uid_map", host);
	int r = writefile(path, m);
	if (r < 0)
		return r;
	if (strcmp(maps[var], "self") == 0)
		snprintf(m, sizeof m, "0 %d 1", (int)getegid());
	snprintf(path, sizeof path, "/proc/%d/gid_map", host);
	return writefile(path, m);
}

static void reply(int me) {
	if (write(repp[me][1], "r", 1) != 1)
		die("reply");
}

static void serve(int me);

// born: the first thing a new actor does. A new process lets go of the
// caller's event (only the root may end it).
static void born(int me, int thread) {
	if (!thread) {
		close(READY_FD);
		close(ready);
	}
	S[me].host = hostid(thread);
	reply(me);
	serve(me);
}

static void *thread_main(void *slot) {
	born((int)(long)slot, 1);
	return NULL;
}

// act executes the command in slot me and returns its result. A fork's
// child never returns from it.
static int act(int me) {
	struct slot *s = &S[me];
	char path[64];
	int r, fd;
	switch (s->op) {
	case OP_FORK: {
		long p = syscall(SYS_clone, forks[s->var].flags | SIGCHLD, 0, 0, 0, 0);
		if (p == 0)
			born(s->newslot, 0);
		return p < 0 ? -errno : (int)p;
	}
	case OP_THREAD: {
		pthread_t t;
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&a, 256 << 10);
		r = pthread_create(&t, &a, thread_main, (void *)(long)s->newslot);
		return -r;
	}
	case OP_UNSHARE:
		return unshare(unshares[s->var].flags) < 0 ? -errno : 0;
	case OP_SETNS:
		snprintf(path, sizeof path, "/proc/%d/ns/%s", S[s->arg].host, setnses[s->var]);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			return -errno;
		r = setns(fd, CLONE_NEWPID) < 0 ? -errno : 0;
		close(fd);
		return r;
	case OP_SETSID:
		return setsid() < 0 ? -errno : 0;
	case OP_SETPGID: {
		int who = 0, pgid = 0;
		if (s->var >= 2 && (who = vnr(S[s->arg2].host, "NSpid")) <= 0)
			return -ESRCH; // the child is out of the caller's sight
		if ((s->var == 1 || s->var == 3) && (pgid = vnr(S[s->arg].host, "NSpgid")) <= 0)
			return -ESRCH; // so is the group
		return setpgid(who, pgid) < 0 ? -errno : 0;
	}
	case OP_SUBREAPER:
		return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 ? -errno : 0;
	case OP_WRITEMAP:
		return writemap(S[s->arg].host, s->var);
	case OP_SETUID:
		// Raw calls: glibc's would change every thread of the process.
		if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
			return -errno;
		return 0;
	case OP_REAP:
		r = waitpid(-1, NULL, WNOHANG | __WALL);
		return r < 0 ? -errno : r;
	case OP_EXIT:
		_exit(codes[s->var]);
	case OP_KILL:
		// A fatal signal sent to the calling thread itself is acted on
		// before tgkill returns (a process-directed one may go to another
		// thread while this one replies); an init survives it (it gets
		// no signal it has no handler for).
		syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), signals[s->var]);
		return 1;
	case OP_THREADEXIT:
		syscall(SYS_exit, 0);
		return 0;
	case OP_PARK:
		s->res = 0;
		if (s->arg) {
			// A process without threads parks as a program of its own
			// (see main), which replies once it runs: its capabilities
			// are then what an exec gives, as in a restore by the exec
			// payload, which runs its recorded program again.
			char fd[16];
			snprintf(fd, sizeof fd, "%d", repp[me][1]);
			if (fcntl(repp[me][1], F_SETFD, 0) < 0)
				die("fcntl");
			execl("/proc/self/exe", "histories", "park", fd, (char *)NULL);
			die("exec /proc/self/exe");
		}
		reply(me);
		park();
	}
	return -EINVAL;
}

static void serve(int me) {
	for (;;) {
		char c;
		ssize_t n = read(cmdp[me][0], &c, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n != 1)
			die("read command");
		S[me].res = act(me);
		reply(me);
	}
}

// ---------------------------------------------------------------- driver

// actor is the driver's model of one slot (the root's memory only).
static struct actor {
	int used, alive, done; // done: parked or stopped
	int thread;            // a thread beside its process's leader
	int proc;              // the slot of its process's leader thread
	int pidfd;             // the thread's pidfd for a thread, else the process's
	// A process's pid namespaces, its own first, by inode, and its start
	// time (a zombie's pid is its own until it is reaped).
	unsigned long pidns[MAXLEVEL];
	int levels;
	unsigned long long start;
} A[MAXA];

static uint64_t rng;

static uint64_t next(void) { // splitmix64
	uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int rnd(int n) {
	return n > 0 ? (int)(next() % (uint64_t)n) : 0;
}

static int ok[NOPS][8]; // operations the kernel accepted, by variant
static int threadforks, initexits; // forks by a thread, exits of an init

static void say(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

static int nused(int thread) {
	int n = 0;
	for (int i = 0; i < MAXA; i++)
		n += A[i].used && A[i].thread == thread;
	return n;
}

static int freeslot(void) {
	for (int i = 0; i < MAXA; i++)
		if (!A[i].used)
			return i;
	return -1;
}

// dead reports (without waiting) whether the pidfd says the actor died.
static int dead(int a) {
	struct pollfd p = {.fd = A[a].pidfd, .events = POLLIN};
	return poll(&p, 1, 0) == 1;
}

// sweep marks every actor the kernel ended (a process's exit takes its
// threads; an init's exit takes its namespace: the kernel has killed and
// waited for them by the time the init's pidfd says it exited).
static void sweep(void) {
	for (int i = 0; i < MAXA; i++)
		if (A[i].used && A[i].alive && (dead(i) || dead(A[i].proc) || !A[A[i].proc].alive)) {
			A[i].alive = 0;
			say("   actor %d (host %d) is gone\n", i, S[i].host);
		}
}

// await waits for actor a's reply, or for the end of the process (or, for
// a thread's own exit, the thread) it belongs to. It says whether a
// replied.
static int await(int a, int threadexit) {
	int fd = threadexit ? A[a].pidfd : A[A[a].proc].pidfd;
	struct pollfd p[2] = {{.fd = repp[a][0], .events = POLLIN}, {.fd = fd, .events = POLLIN}};
	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[0].revents & POLLIN) {
			char c;
			if (read(repp[a][0], &c, 1) != 1)
				die("read reply");
			return 1;
		}
		if (p[1].revents)
			return 0;
	}
}

// run has actor a execute the command in its slot; the root's main thread
// executes its own.
static int run(int a) {
	if (a == 0)
		return act(0);
	if (write(cmdp[a][1], "c", 1) != 1)
		die("command");
	int replied = await(a, S[a].op == OP_THREADEXIT);
	return replied ? S[a].res : -EINTR;
}

// adopt registers the actor born in slot n (its birth reply is the event).
// starttime is field 22 of /proc/PID/stat (0 when there is no such task).
static unsigned long long starttime(int host) {
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", host);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	for (int f = 2; p && f < 22; f++)
		p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

// record reads process n's pid namespaces (NS_GET_PARENT up to the host's)
// and start time while it is alive.
static void record(int n) {
	char path[64];
	struct stat st;
	snprintf(path, sizeof path, "/proc/%d/ns/pid", S[n].host);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	A[n].levels = 0;
	while (fd >= 0 && A[n].levels < MAXLEVEL && fstat(fd, &st) == 0) {
		A[n].pidns[A[n].levels++] = st.st_ino;
		int up = ioctl(fd, NS_GET_PARENT);
		close(fd);
		fd = up;
	}
	if (fd >= 0)
		close(fd);
	A[n].start = starttime(S[n].host);
}

static void adopt(int n, int thread, int proc) {
	char c;
	if (read(repp[n][0], &c, 1) != 1)
		die("birth");
	int fd = syscall(SYS_pidfd_open, S[n].host, thread ? PIDFD_THREAD : 0);
	if (fd < 0)
		die("pidfd_open");
	A[n] = (struct actor){.used = 1, .alive = 1, .thread = thread, .proc = thread ? proc : n, .pidfd = fd};
	if (!thread)
		record(n);
}

// exists says whether process slot n is still a task (alive or a zombie).
static int exists(int n) {
	return A[n].used && !A[n].thread && starttime(S[n].host) == A[n].start;
}

static int under(int n, unsigned long ns) {
	for (int l = 0; l < A[n].levels; l++)
		if (A[n].pidns[l] == ns)
			return 1;
	return 0;
}

// heldInit says whether process p is the init of a pid namespace whose
// exit the kernel would hold: zap_pid_ns_processes waits until every task
// of the namespace is reaped, and one whose parent is outside the
// namespace is reaped only by that parent, which in a history parks
// instead. An init exits only when no such task exists.
static int heldInit(int p) {
	int n = field(S[p].host, "NSpid", -1);
	if (n < 2 || field(S[p].host, "NSpid", n - 1) != 1)
		return 0;
	unsigned long ns = A[p].pidns[0];
	for (int t = 0; t < MAXA; t++) {
		if (t == p || !exists(t) || !under(t, ns))
			continue;
		int ppid = field(S[t].host, "PPid", 0), q = -1;
		for (int i = 0; i < MAXA; i++)
			if (exists(i) && S[i].host == ppid)
				q = i;
		if (q < 0 || !under(q, ns))
			return 1;
	}
	return 0;
}

// pick returns a random live actor (processes only if procs), or -1.
static int pick(int procs) {
	int c[MAXA], n = 0;
	for (int i = 0; i < MAXA; i++)
		if (A[i].used && A[i].alive && !A[i].done && (!procs || !A[i].thread))
			c[n++] = i;
	return n ? c[rnd(n)] : -1;
}

// child returns a random live process whose parent is a's process, or -1.
static int child(int a) {
	int c[MAXA], n = 0;
	for (int i = 1; i < MAXA; i++)
		if (A[i].used && A[i].alive && !A[i].thread && field(S[i].host, "PPid", 0) == S[A[a].proc].host)
			c[n++] = i;
	return n ? c[rnd(n)] : -1;
}

static int pickop(void) {
	int sum = 0;
	for (int i = 0; i < NOPS; i++)
		sum += optab[i].weight;
	int r = rnd(sum);
	for (int i = 0; i < NOPS; i++)
		if ((r -= optab[i].weight) < 0)
			return i;
	return OP_FORK;
}

// step runs one random operation; it returns 0 when the one it drew does
// not apply (the driver draws again): the root's process never leaves (nor
// makes a sibling of itself outside the tree), and an init whose exit the
// kernel would hold does not exit (heldInit).
static int step(int k) {
	int a = pick(0), op = pickop();
	if (a < 0)
		return 1;
	struct slot *s = &S[a];
	int root = A[a].proc == 0;
	s->op = op;
	s->var = rnd(nvars(op));
	s->arg = pick(0);
	s->arg2 = -1;
	s->newslot = -1;
	switch (op) {
	case OP_FORK:
		if (root && (forks[s->var].flags & CLONE_PARENT))
			return 0;
		if (nused(0) >= MAXPROCS || (s->newslot = freeslot()) < 0)
			return 0;
		break;
	case OP_THREAD:
		if (nused(1) >= MAXTHREADS || (s->newslot = freeslot()) < 0)
			return 0;
		break;
	case OP_SETPGID:
		if (s->var >= 2 && (s->arg2 = child(a)) < 0)
			return 0;
		if (s->var == 1 || s->var == 3)
			s->arg = pick(1);
		break;
	case OP_EXIT:
		if (root || heldInit(A[a].proc))
			return 0;
		break;
	case OP_KILL:
		if (root)
			return 0;
		break;
	case OP_THREADEXIT:
		if (!A[a].thread)
			return 0;
		break;
	}
	say("%3d: actor %d (host %d) %s ", k, a, s->host, optab[op].name);
	switch (op) {
	case OP_FORK:
		say("%s", forks[s->var].name);
		break;
	case OP_UNSHARE:
		say("%s", unshares[s->var].name);
		break;
	case OP_SETNS:
		say("%s of actor %d", setnses[s->var], s->arg);
		break;
	case OP_SETPGID:
		say("%s", pgids[s->var]);
		if (s->arg2 >= 0)
			say(" child %d", s->arg2);
		if (s->var == 1 || s->var == 3)
			say(" group of actor %d", s->arg);
		break;
	case OP_WRITEMAP:
		say("\"%s\" of actor %d", maps[s->var], s->arg);
		break;
	case OP_EXIT:
		say("%d", codes[s->var]);
		break;
	case OP_KILL:
		say("%s", strsignal(signals[s->var]));
		break;
	}
	int init = (op == OP_EXIT || op == OP_KILL) && field(S[A[a].proc].host, "NSpid", field(S[A[a].proc].host, "NSpid", -1) - 1) == 1;
	int res = run(a);
	threadforks += op == OP_FORK && res >= 0 && A[a].thread;
	initexits += op == OP_EXIT && init;
	if (op == OP_KILL && res == 1) {
		say(" -> survived (an init gets no signal it has no handler for: the kernel's rule)\n");
	} else if (op == OP_EXIT || op == OP_KILL || op == OP_THREADEXIT) {
		ok[op][s->var]++;
		say(" -> done\n");
	} else if (res < 0) {
		say(" -> %s (the kernel's rule)\n", strerror(-res));
	} else {
		ok[op][s->var]++;
		say(" -> %d\n", res);
	}
	if (res >= 0 && (op == OP_FORK || op == OP_THREAD)) {
		adopt(s->newslot, op == OP_THREAD, A[a].proc);
		say("   actor %d is host %d\n", s->newslot, S[s->newslot].host);
	}
	sweep();
	// Most user namespaces get their maps right away, as the tools that
	// make them do: by the parent after the clone, by the task itself
	// after its unshare. The others keep them for a later writemap from
	// anyone, or never get any.
	int user = (op == OP_FORK && (forks[s->var].flags & CLONE_NEWUSER)) ||
		   (op == OP_UNSHARE && (unshares[s->var].flags & CLONE_NEWUSER));
	if (res >= 0 && user && A[a].alive && rnd(8) != 0) {
		int target = op == OP_FORK ? s->newslot : a;
		// A random map, else (as such tools fall back) the writer's own
		// ids, which any writer with the right to write may map.
		for (int try = 0; try < 2; try++) {
			s->op = OP_WRITEMAP;
			s->var = try ? N(maps) - 1 : rnd(N(maps));
			s->arg = target;
			say("%3d: actor %d (host %d) writemap \"%s\" of actor %d", k, a, s->host, maps[s->var], target);
			if ((res = run(a)) >= 0) {
				ok[OP_WRITEMAP][s->var]++;
				say(" -> 0\n");
				break;
			}
			say(" -> %s (the kernel's rule)\n", strerror(-res));
		}
	}
	return 1;
}

// state is the state letter of /proc/PID/stat.
static char state(int host) {
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", host);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] ? p[2] : '?';
}

// threads says whether process p has a live thread beside its leader.
static int threads(int p) {
	for (int i = 0; i < MAXA; i++)
		if (A[i].used && A[i].alive && A[i].thread && A[i].proc == p)
			return 1;
	return 0;
}

// finish parks every thread and every process but the root, stops some
// of the processes, and waits until each stop took effect. The root sends
// the SIGSTOP: an init ignores one from its own namespace, not from an
// ancestor's, and the root's active namespace is the host's.
static void finish(void) {
	for (int pass = 0; pass < 2; pass++)
		for (int i = 1; i < MAXA; i++) {
			if (!A[i].used || !A[i].alive || A[i].thread != !pass)
				continue;
			S[i].op = OP_PARK;
			S[i].arg = !A[i].thread && !threads(i);
			if (run(i) < 0) {
				sweep();
				continue;
			}
			A[i].done = 1;
			ok[OP_PARK][0]++;
			say("end: actor %d (host %d) parks", i, S[i].host);
			if (A[i].thread || rnd(6) != 0) {
				say("\n");
				continue;
			}
			if (kill(S[i].host, SIGSTOP) < 0) {
				say(", stop: %s (the kernel's rule)\n", strerror(errno));
				continue;
			}
			ok[OP_STOP][0]++;
			say(", stopped\n");
			while (state(S[i].host) != 'T') {
				struct timespec ms = {0, 1000000};
				nanosleep(&ms, NULL); // SIGSTOP acts on its own schedule; no event says when
			}
		}
}

int main(int argc, char **argv) {
	if (argc == 3 && strcmp(argv[1], "park") == 0) {
		// A parked process (OP_PARK): reply, then park. Run again by
		// the exec payload, the fd is not there.
		write(atoi(argv[2]), "r", 1);
		close(atoi(argv[2]));
		park();
	}
	if (argc != 3) {
		fprintf(stderr, "usage: histories SEED READY (fd 3: the ready event)\n");
		return 2;
	}
	struct stat st;
	if (stat(argv[2], &st) == 0 && st.st_size > 0)
		park(); // started again by the exec payload: the history is over
	// Opened now: the root may lose the right to create it on the way
	// (a user namespace of its own, other ids).
	ready = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (ready < 0)
		die("open READY");
	rng = strtoull(argv[1], NULL, 10);
	struct rlimit core = {0, 0};
	setrlimit(RLIMIT_CORE, &core); // killed-by-signal statuses without the core bit
	// Orphans at level 0 stay in the tree.
	if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
		die("PR_SET_CHILD_SUBREAPER");
	S = mmap(NULL, sizeof(struct slot) * MAXA, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (S == MAP_FAILED)
		die("mmap");
	for (int i = 0; i < MAXA; i++)
		if (pipe2(cmdp[i], O_CLOEXEC) < 0 || pipe2(repp[i], O_CLOEXEC) < 0)
			die("pipe");
	S[0].host = getpid();
	int fd = syscall(SYS_pidfd_open, getpid(), 0);
	if (fd < 0)
		die("pidfd_open");
	A[0] = (struct actor){.used = 1, .alive = 1, .pidfd = fd};
	record(0);
	int steps = 12 + rnd(40);
	say("seed %s: %d steps\n", argv[1], steps);
	for (int k = 0; k < steps;)
		k += step(k);
	finish();
	if (write(ready, "ready\n", 6) != 6)
		die("write READY");
	close(ready);
	say("covered:");
	for (int op = 0; op < NOPS; op++)
		for (int v = 0; v < nvars(op); v++)
			if (ok[op][v])
				say(" %s/%d", optab[op].name, v);
	if (threadforks)
		say(" threadfork/0");
	if (initexits)
		say(" initexit/0");
	say("\n");
	if (write(READY_FD, "r", 1) != 1)
		die("ready event");
	close(READY_FD);
	park();
}
