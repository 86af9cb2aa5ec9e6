// sessions: session/group shapes across a pid namespace boundary that the
// restore needs temporary helper tasks for, built with raw syscalls. The caller
// starts it as a session leader (R); every task then sleeps until killed.
//
//   sessions orphan-session
//     R clones I with CLONE_NEWPID (I: PID 1, in R's session). R forks S,
//     which calls setsid, enters I's namespace (setns pid_for_children) and
//     forks C there; C forks T and exits; S reaps C. T is left in S's
//     session and group, a child of I: its session leader S is alive in the
//     parent namespace and is neither T's parent nor its ancestor.
//     Tasks: R, I, S, T.
//
//   split-group
//     R forks G and M and puts both in G's group (setpgid by the parent);
//     G exits and R reaps it. M clones I with CLONE_NEWPID (I stays in G's
//     group). R enters I's namespace and forks Y there (in R's session and
//     group); Y forks O and exits; R reaps Y. O is left in R's group, a
//     child of I, while I is in the group of dead G, which no task of I's
//     namespace can name.
//     Tasks: R, M, I, O.
//
//   late-init
//     R forks P; P forks Q, which clones I with CLONE_NEWPID. P enters
//     I's namespace, forks T there (in R's session and group) and only then
//     calls setsid. T's parent leads another session than T's, and T's
//     namespace was made by the parent's descendant.
//     Tasks: R, P, Q, I, T.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
	perror(what);
	_exit(125);
}

// sleep_forever: what every task of the tree does once it is in place. It
// execs busybox sleep, so that a restored task (the exec payload runs the
// recorded program again) sleeps too instead of building its part a second
// time.
static void sleep_forever(void) {
	execl("/bin/busybox", "sleep", "1000000", (char *)NULL);
	die("exec /bin/busybox sleep");
}

// newpid clones a child that is PID 1 of a new pid namespace and runs
// sleep_forever; it returns the child's pid in the caller's namespace.
static pid_t newpid(void) {
	long pid = syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0)
		die("clone(CLONE_NEWPID)");
	if (pid == 0)
		sleep_forever();
	return pid;
}

// enter makes the caller's next children be born in init's pid namespace.
static void enter(pid_t init) {
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/ns/pid", init);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWPID) < 0)
		die("setns(CLONE_NEWPID)");
	close(fd);
}

// orphan forks a child that forks a grandchild and exits: the grandchild
// waits forever, an orphan given to the init of the child's namespace. The
// caller reaps the child.
static void orphan(void) {
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		pid_t t = fork();
		if (t < 0)
			die("fork");
		if (t == 0)
			sleep_forever();
		_exit(0); // the orphan exists: leave it to the init
	}
	if (waitpid(c, NULL, 0) != c)
		die("waitpid");
}

static void orphan_session(void) {
	pid_t i = newpid();
	pid_t s = fork();
	if (s < 0)
		die("fork");
	if (s == 0) {
		if (setsid() < 0)
			die("setsid");
		enter(i);
		orphan();
		sleep_forever();
	}
	sleep_forever();
}

static void split_group(void) {
	int go[2];
	if (pipe(go) < 0)
		die("pipe");
	pid_t g = fork();
	if (g < 0)
		die("fork");
	if (g == 0) {
		char c;
		close(go[1]);
		read(go[0], &c, 1); // until M is in the group too
		_exit(0);
	}
	if (setpgid(g, g) < 0)
		die("setpgid(G)");
	int ready[2];
	if (pipe(ready) < 0)
		die("pipe");
	pid_t m = fork();
	if (m < 0)
		die("fork");
	if (m == 0) {
		char c;
		close(go[1]);
		close(ready[0]);
		if (read(go[0], &c, 1) != 1) // until R moved it into G's group
			die("read");
		pid_t i = newpid();
		char buf[16];
		int n = snprintf(buf, sizeof buf, "%d", i);
		if (write(ready[1], buf, n + 1) != n + 1)
			die("write");
		sleep_forever();
	}
	close(ready[1]);
	if (setpgid(m, g) < 0)
		die("setpgid(M, G)");
	if (write(go[1], "xx", 2) != 2) // one byte for M; G exits on EOF too
		die("write");
	close(go[1]);
	char buf[16] = {0};
	if (read(ready[0], buf, sizeof buf - 1) <= 0)
		die("read");
	if (waitpid(g, NULL, 0) != g)
		die("waitpid(G)");
	// I's number in our namespace is M's: the same namespace, level 0.
	enter(atoi(buf));
	orphan();
	sleep_forever();
}

static void late_init(void) {
	pid_t p = fork();
	if (p < 0)
		die("fork");
	if (p == 0) {
		int up[2];
		if (pipe(up) < 0)
			die("pipe");
		pid_t q = fork();
		if (q < 0)
			die("fork");
		if (q == 0) {
			close(up[0]);
			char buf[16];
			int n = snprintf(buf, sizeof buf, "%d", newpid());
			if (write(up[1], buf, n + 1) != n + 1)
				die("write");
			sleep_forever();
		}
		close(up[1]);
		char buf[16] = {0};
		if (read(up[0], buf, sizeof buf - 1) <= 0)
			die("read");
		enter(atoi(buf));
		pid_t t = fork();
		if (t < 0)
			die("fork");
		if (t == 0)
			sleep_forever();
		if (setsid() < 0)
			die("setsid");
		sleep_forever();
	}
	sleep_forever();
}

int main(int argc, char **argv) {
	if (argc == 2 && strcmp(argv[1], "orphan-session") == 0)
		orphan_session();
	if (argc == 2 && strcmp(argv[1], "split-group") == 0)
		split_group();
	if (argc == 2 && strcmp(argv[1], "late-init") == 0)
		late_init();
	fprintf(stderr, "usage: sessions orphan-session|split-group|late-init\n");
	return 2;
}
