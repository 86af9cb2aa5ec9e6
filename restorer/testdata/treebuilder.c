// treebuilder: the reference BenchmarkRestoreScale compares the restorer
// with - the same tree as the benchmark's image (bigTree in
// scenario_test.go), made the ordinary way, by fork and exec, with pids
// the kernel chooses:
//
//   treebuilder N exec|stopped
//
// A root in a new pid namespace (level 1) with 10 children that are each
// the init of another one (level 2), and the other N-11 tasks children of
// those inits, dealt out in turn; every seventh makes a session of its own.
// With exec, every task execs /bin/busybox sleep 1000 once it has made its
// children. With stopped, the inits wait in pause() and the other tasks
// exit unreaped (zombies), as the benchmark's image has them.
//
// fd 3 is the readiness pipe: every task holds it, close-on-exec, and drops
// it once it is made (its exec, its exit, or a close before pause), so the
// caller reads end of file when the whole tree is there. The first process
// then waits for its stdin to close, kills the root (which takes its pid
// namespaces with it) and reaps it.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define INITS 10

static int n, stopped;

static void become(void) {
	if (stopped) {
		close(3);
		for (;;)
			pause();
	}
	execl("/bin/busybox", "sleep", "1000", (char *)0);
	_exit(127);
}

// spawn runs fn(arg) in a new child, in a new pid namespace if newns.
static pid_t spawn(int newns, void (*fn)(int), int arg) {
	pid_t pid = (pid_t)syscall(SYS_clone, SIGCHLD | (newns ? CLONE_NEWPID : 0), 0, 0, 0, 0);
	if (pid < 0) {
		perror("clone");
		exit(1);
	}
	if (pid == 0) {
		fn(arg);
		_exit(0);
	}
	return pid;
}

static void member(int i) {
	if (i % 7 == 0)
		setsid();
	if (stopped)
		_exit(0);
	become();
}

// init k makes the members k, k+INITS, ... of the N-1-INITS.
static void init(int k) {
	for (int i = k; i < n - 1 - INITS; i += INITS)
		spawn(0, member, i);
	become();
}

static void root(int unused) {
	(void)unused;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (int k = 0; k < INITS && k + 1 < n; k++)
		spawn(1, init, k);
	become();
}

int main(int argc, char **argv) {
	if (argc != 3 || (n = atoi(argv[1])) < 1) {
		fprintf(stderr, "usage: treebuilder N exec|stopped\n");
		return 2;
	}
	stopped = argv[2][0] == 's';
	if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0) {
		perror("fd 3");
		return 1;
	}
	pid_t r = spawn(1, root, 0);
	close(3);
	char c;
	while (read(0, &c, 1) > 0)
		;
	kill(r, SIGKILL);
	waitpid(r, 0, 0);
	return 0;
}
