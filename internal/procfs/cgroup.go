package procfs

import "errors"

// Cgroup2Mount is where cgroup v2 is mounted: the first cgroup2 mount in
// /proc/self/mountinfo (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
// hybrid setup, docs/kernel.md F10.1).
func Cgroup2Mount() (string, error) {
	ms, err := SelfMountInfo()
	if err != nil {
		return "", err
	}
	for _, m := range ms {
		if m.FSType == "cgroup2" {
			return m.Point, nil
		}
	}
	return "", errors.New("no cgroup2 mount")
}
