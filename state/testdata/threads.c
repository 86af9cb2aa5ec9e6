// threads: a second thread, both asleep; what dump --state refuses (by pid
// and thread count) in this first slice.
#include <pthread.h>
#include <unistd.h>

static void *sleeper(void *arg) {
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(void) {
	pthread_t t;
	if (pthread_create(&t, NULL, sleeper, NULL) != 0)
		return 1;
	write(1, "up\n", 3);
	for (;;)
		pause();
}
