/*
 * Test helper for the init tests: small, single-threaded and free of any
 * runtime that would itself catch, block or send signals, so what it reports
 * is what the kernel delivered. Built by the tests with the C compiler.
 *
 *   helper record FILE           block all signals, append "SIG PID\n" to FILE
 *                                for each signal (sigwaitinfo), forever;
 *                                writes "ready 0" first
 *   helper exec-with BLK IGN CMD...   set the blocked mask BLK and ignore the
 *                                signals of mask IGN (hex, bit N-1 = signal N),
 *                                then exec CMD
 *   helper burst N               fork N children that exit at once, never
 *                                wait, then exit: N zombies for the reaper
 *   helper burst-reap N          fork N children that exit at once and reap
 *                                them itself (the kernel floor)
 *   helper handover N reap|keep  a child forks N children that exit at once;
 *                                with "reap" it reaps them itself (the kernel
 *                                floor), with "keep" it exits and leaves them
 *                                to the reaper; prints the nanoseconds from
 *                                the moment all N are zombies until all N
 *                                are gone (making them is not timed: a fork
 *                                costs far more than a reap)
 *   helper together CODE         fork a child; both exit at the same moment
 *                                (released by one pipe close), parent with CODE
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int record(const char *file) {
	/* Raw system calls: the C library's sigfillset leaves out the signals
	 * it reserves (32, 33), and those must be recorded too. */
	unsigned long long all = ~0ULL;
	syscall(SYS_rt_sigprocmask, SIG_BLOCK, &all, NULL, 8);
	FILE *f = fopen(file, "a");
	if (!f) return 1;
	fprintf(f, "ready 0\n");
	fflush(f);
	for (;;) {
		siginfo_t si;
		int s = syscall(SYS_rt_sigtimedwait, &all, &si, NULL, 8);
		if (s < 0) continue;
		fprintf(f, "%d %d\n", s, (int)si.si_pid);
		fflush(f);
	}
}

static int exec_with(char *blk, char *ign, char **cmd) {
	unsigned long long b = strtoull(blk, NULL, 16), g = strtoull(ign, NULL, 16);
	/* Raw system calls, and every signal set one way or the other: what
	 * this process inherited (even 32 and 33, which the C library hides)
	 * must not leak into the test. */
	for (int s = 1; s <= 64; s++) {
		struct { unsigned long handler, flags, restorer, mask; } act = {0};
		if (s == SIGKILL || s == SIGSTOP) continue;
		act.handler = (g & (1ULL << (s - 1))) ? 1 /* SIG_IGN */ : 0 /* SIG_DFL */;
		syscall(SYS_rt_sigaction, s, &act, NULL, 8);
	}
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &b, NULL, 8);
	execvp(cmd[0], cmd);
	perror("exec");
	return 127;
}

static int burst(int n, int reap) {
	for (int i = 0; i < n; i++) {
		pid_t p = vfork();
		if (p == 0) _exit(0);
		if (p < 0) { perror("fork"); return 1; }
	}
	if (reap)
		while (wait(NULL) > 0)
			;
	return 0;
}

static int together(int code) {
	int p[2];
	if (pipe(p) < 0) return 1;
	pid_t c = fork();
	char b;
	if (c == 0) {
		close(p[1]);
		read(p[0], &b, 1);
		_exit(0);
	}
	close(p[0]);
	close(p[1]); /* releases the child */
	_exit(code);
}

static long long now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int handover(int n, int reap) {
	int p[2];
	if (pipe(p) < 0) return 1;
	pid_t mid = fork();
	if (mid == 0) {
		close(p[0]);
		for (int i = 0; i < n; i++) {
			pid_t c = vfork(); /* cheap: no page tables to copy */
			if (c == 0) _exit(0);
			if (c < 0) _exit(1);
			write(p[1], &c, sizeof c);
		}
		/* Every child is a zombie now: the clock starts. */
		long long t = now_ns();
		write(p[1], &t, sizeof t);
		if (reap)
			while (wait(NULL) > 0)
				;
		_exit(0);
	}
	close(p[1]);
	pid_t *pids = calloc(n, sizeof *pids);
	int got = 0;
	while (got < n && read(p[0], &pids[got], sizeof *pids) == sizeof *pids)
		got++;
	long long start;
	if (read(p[0], &start, sizeof start) != sizeof start)
		return 1;
	waitpid(mid, NULL, 0);
	/* A pid is gone once its zombie has been reaped. */
	for (int i = 0; i < got; i++)
		while (kill(pids[i], 0) == 0)
			sched_yield();
	printf("%lld\n", now_ns() - start);
	return got == n ? 0 : 1;
}

int main(int argc, char **argv) {
	if (argc >= 3 && !strcmp(argv[1], "record")) return record(argv[2]);
	if (argc >= 5 && !strcmp(argv[1], "exec-with")) return exec_with(argv[2], argv[3], argv + 4);
	if (argc >= 3 && !strcmp(argv[1], "burst")) return burst(atoi(argv[2]), 0);
	if (argc >= 3 && !strcmp(argv[1], "burst-reap")) return burst(atoi(argv[2]), 1);
	if (argc >= 4 && !strcmp(argv[1], "handover")) return handover(atoi(argv[2]), !strcmp(argv[3], "reap"));
	if (argc >= 3 && !strcmp(argv[1], "together")) return together(atoi(argv[2]));
	fprintf(stderr, "usage: helper record|exec-with|burst|burst-reap|together ...\n");
	return 2;
}
