// pipe: numbers in flight through a pipe between two pid namespaces. The
// root makes a pipe and a child in a new pid namespace (the writer, PID 1
// there), which makes its own child in a nested one (the reader). The
// writer sends 1, 2, 3, ... (8 bytes each) every millisecond; the reader
// takes one every 3 ms and appends "N ok" to OUT, so the pipe always
// holds numbers on their way. Restored with its state, the reader goes on
// from the number after its last line: none lost, none twice.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms) {
	struct timespec ts = {0, ms * 1000 * 1000};
	nanosleep(&ts, NULL);
}

static pid_t child_in_new_pidns(void) {
	if (unshare(CLONE_NEWPID) != 0) {
		perror("unshare");
		exit(1);
	}
	pid_t c = fork();
	if (c < 0) {
		perror("fork");
		exit(1);
	}
	return c;
}

static int wait_for(pid_t c) {
	int st;
	while (waitpid(c, &st, 0) < 0)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: pipe OUT\n");
		return 2;
	}
	int p[2];
	if (pipe(p) != 0)
		return 1;
	pid_t w = child_in_new_pidns();
	if (w > 0) {
		close(p[0]);
		close(p[1]);
		return wait_for(w);
	}
	pid_t r = child_in_new_pidns();
	if (r == 0) { // the reader
		close(p[1]);
		int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0)
			return 1;
		for (;;) {
			uint64_t v;
			if (read(p[0], &v, sizeof v) != sizeof v)
				return 3;
			char line[64];
			int n = snprintf(line, sizeof line, "%lu ok\n", (unsigned long)v);
			if (write(fd, line, n) != n)
				return 3;
			nap(3);
		}
	}
	close(p[0]); // the writer
	for (uint64_t c = 1;; c++) {
		if (write(p[1], &c, sizeof c) != sizeof c)
			return 3;
		nap(1);
	}
}
