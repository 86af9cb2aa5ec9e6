// threads: a counter in a second thread. main starts it and waits for it
// in pthread_join (a futex wait); the thread appends "N ok" to OUT every
// 2 ms, checking that its thread-local copy (fs-based TLS) and the shared
// counter agree. Restored with its state, both threads come back and the
// count goes on.
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t counter;
static __thread uint64_t mine;
static int fd;

static void *count(void *arg) {
	(void)arg;
	for (;;) {
		counter++;
		mine++;
		char line[64];
		int n = snprintf(line, sizeof line, "%lu %s\n", (unsigned long)counter, mine == counter ? "ok" : "BAD");
		if (write(fd, line, n) != n)
			return NULL;
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: threads OUT\n");
		return 2;
	}
	fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return 1;
	pthread_t t;
	if (pthread_create(&t, NULL, count, NULL) != 0)
		return 1;
	pthread_join(t, NULL);
	return 3;
}
