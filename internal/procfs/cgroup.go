package procfs

import (
	"errors"
	"os"
	"strings"
)

// Cgroup2Mount is where cgroup v2 is mounted: the first cgroup2 mount in
// /proc/self/mountinfo (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
// hybrid setup, docs/kernel.md F10.1).
func Cgroup2Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ... mountpoint ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], nil
		}
	}
	return "", errors.New("no cgroup2 mount")
}
