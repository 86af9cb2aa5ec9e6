// counter: the program the state tests dump and restore. It nests LEVELS
// new pid namespaces below itself (each parent waits for its child), and
// the innermost task fills HEAP_MB of heap with a pseudo-random pattern,
// then forever: increments a counter in memory, checks the heap's
// checksum and that CLOCK_MONOTONIC did not go back, and appends
// "COUNTER ok" (or "COUNTER BAD", and exits) to OUT,
// then sleeps PERIOD_MS (default 2).
// A restored copy that continues writes the next number, not 1.
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t checksum(const uint64_t *p, size_t n) {
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ull;
	}
	return h;
}

int main(int argc, char **argv) {
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: counter LEVELS OUT HEAP_MB [PERIOD_MS]\n");
		return 2;
	}
	int levels = atoi(argv[1]);
	const char *out = argv[2];
	size_t words = ((size_t)atoi(argv[3]) << 20) / 8;
	long period = argc == 5 ? atol(argv[4]) : 2;
	while (levels-- > 0) {
		if (unshare(CLONE_NEWPID) != 0) {
			perror("unshare");
			return 1;
		}
		pid_t c = fork();
		if (c < 0) {
			perror("fork");
			return 1;
		}
		if (c > 0) {
			int st;
			while (waitpid(c, &st, 0) < 0)
				;
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
	}
	uint64_t *heap = malloc(words * 8);
	if (heap == NULL)
		return 1;
	uint64_t x = 88172645463325252ull;
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		heap[i] = x;
	}
	const uint64_t want = checksum(heap, words);
	int fd = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return 1;
	static volatile uint64_t counter; // in .bss: a private file mapping's neighbour
	struct timespec last = {0, 0};
	for (;;) {
		counter++;
		// Through the vdso, which a restore moves back to its address.
		struct timespec now;
		int ok = clock_gettime(CLOCK_MONOTONIC, &now) == 0 &&
			 (now.tv_sec > last.tv_sec || (now.tv_sec == last.tv_sec && now.tv_nsec >= last.tv_nsec));
		last = now;
		ok = ok && checksum(heap, words) == want;
		char line[64];
		int n = snprintf(line, sizeof line, "%lu %s\n", (unsigned long)counter, ok ? "ok" : "BAD");
		if (write(fd, line, n) != n || !ok)
			return 3;
		struct timespec ts = {period / 1000, period % 1000 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
