// clonens: the shape of bubblewrap, runc and Chromium's sandbox. It clones
// its child with CLONE_NEWUSER|CLONE_NEWPID in one call, stays in its own
// user namespace and writes the child's maps from there, then waits for the
// child and exits with its status.
//
//   clonens [-m INSIDE:OUTSIDE:COUNT] [-d] CMD [ARGS...]
//
// -m is the uid and gid map line (default 0:0:1, root to root); -d denies
// setgroups in the new namespace. The child takes the map's first inside
// ids and runs CMD once its maps exist.
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>
#include <grp.h>

static void put(int pid, const char *file, const char *text) {
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
	int fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		perror(path);
		exit(125);
	}
	close(fd);
}

int main(int argc, char **argv) {
	unsigned in = 0, out = 0, n = 1;
	int deny = 0, opt;
	while ((opt = getopt(argc, argv, "+m:d")) != -1) {
		if (opt == 'm' && sscanf(optarg, "%u:%u:%u", &in, &out, &n) == 3)
			continue;
		if (opt == 'd') {
			deny = 1;
			continue;
		}
		fprintf(stderr, "usage: clonens [-m IN:OUT:COUNT] [-d] CMD...\n");
		return 2;
	}
	if (optind >= argc)
		return 2;
	int go[2], up[2];
	if (pipe2(go, O_CLOEXEC) < 0 || pipe2(up, O_CLOEXEC) < 0)
		return 125;
	long pid = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0) {
		perror("clone");
		return 125;
	}
	if (pid == 0) {
		char c;
		close(go[1]);
		// /proc is the host's: our number there is what /proc/self
		// names, not the one clone returned in our parent's namespace
		char self[32] = {0};
		if (readlink("/proc/self", self, sizeof self - 1) <= 0 || write(up[1], self, sizeof self) != sizeof self)
			_exit(125);
		if (read(go[0], &c, 1) != 1)
			_exit(125);
		// become the map's first inside id (root), as bubblewrap does
		if (!deny && setgroups(0, NULL) < 0)
			_exit(125);
		if (setresgid(in, in, in) < 0 || setresuid(in, in, in) < 0)
			_exit(125);
		execvp(argv[optind], argv + optind);
		_exit(127);
	}
	close(go[0]);
	char self[32];
	if (read(up[0], self, sizeof self) != sizeof self)
		return 125;
	int hostpid = atoi(self);
	char line[64];
	snprintf(line, sizeof line, "%u %u %u\n", in, out, n);
	put(hostpid, "setgroups", deny ? "deny" : "allow");
	put(hostpid, "uid_map", line);
	put(hostpid, "gid_map", line);
	if (write(go[1], "x", 1) != 1)
		return 125;
	close(go[1]);
	int st;
	while (waitpid(pid, &st, __WALL) < 0)
		;
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return WEXITSTATUS(st);
}
