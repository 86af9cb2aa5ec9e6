package pstree

// Mount is one mount of a mount namespace the dump recorded (one that is
// not ambient), as /proc/PID/mountinfo of one of its members lists it, in
// that file's order: a mount comes before the mounts made on top of it.
type Mount struct {
	// Point is where it is mounted: an absolute, clean path from the root
	// directory of the member the dump read (mountinfo's mount point).
	// A container's root is "/".
	Point string
	// Root is the directory of its filesystem mounted there: "/" for a
	// whole filesystem, another path for a bind mount of a part of it.
	Root string
	// FSType and Source are mountinfo's filesystem type ("proc", "tmpfs",
	// "ext4") and mount source ("proc", "/dev/sda1").
	FSType, Source string
	// Options are the per-mount options ("rw,nosuid,nodev,relatime"),
	// SuperOptions the filesystem's own ("rw,mode=755,size=65536k").
	Options, SuperOptions string
	// BindOf is 1 + the index of an earlier mount in the list that shows
	// the same filesystem (mountinfo's major:minor) at a directory that
	// contains Root: this mount is a bind mount of a part of that one. 0:
	// no earlier mount shows its filesystem.
	BindOf int
	// HostPath is where the dumper saw Root of a filesystem that no
	// earlier mount shows, found through the dumper's own mountinfo: the
	// source of a bind mount from the host. "" when the dumper sees no
	// mount of that filesystem containing Root.
	HostPath string
	// PidNS is, for a proc mount, the pid namespace it shows (the one
	// whose pid 1 its /proc/1 is); 0 when not a proc mount or unknown.
	PidNS NSID
}

// KernelFS are the filesystem types a restore mounts afresh rather than
// binding them from somewhere: each instance is made by the kernel for
// the namespaces of the task that mounts it (proc its pid namespace,
// sysfs its net namespace, mqueue its ipc namespace, cgroup2 its cgroup
// namespace) or is empty when new (tmpfs, devpts with newinstance).
var KernelFS = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true,
	"mqueue": true, "cgroup2": true, "devtmpfs": true,
}

// DevNodes are the device nodes a restore gives a tmpfs /dev it mounts
// afresh, each a bind mount of this machine's node, as container runtimes
// make them without CAP_MKNOD. check knows them as the restore's own.
var DevNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}
