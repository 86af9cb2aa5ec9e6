// Package procfs is the one package that parses /proc. Everything that reads
// a process from /proc (dump, check) goes through it, so the kernel's text
// formats are known in one place and tested on fixtures (testdata/).
//
// A Reader is bound to one procfs mount (normally "/proc", the host's), so
// every NS* vector it returns starts at that procfs's pid namespace. It reuses
// one buffer and is not safe for concurrent use: the 10,000-task dump reads
// tens of thousands of small files and allocation shows.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Reader reads processes through the procfs mounted at Root.
type Reader struct {
	Root string
	buf  []byte
}

// New returns a Reader of the procfs at root ("/proc" if empty).
func New(root string) *Reader {
	if root == "" {
		root = "/proc"
	}
	return &Reader{Root: root, buf: make([]byte, 8192)}
}

// ErrGone is wrapped when the process or thread no longer exists.
var ErrGone = errors.New("process gone")

func (r *Reader) path(pid int, name string) string {
	return r.Root + "/" + strconv.Itoa(pid) + "/" + name
}

func (r *Reader) taskPath(pid, tid int, name string) string {
	return r.Root + "/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(tid) + "/" + name
}

// readFile reads a whole /proc file into r.buf (grown as needed) without
// stat: procfs reports size 0. The result is valid until the next call.
//
// whole marks a file the kernel hands out in one piece: then a read that
// leaves room in the buffer has reached the end, and the usual extra read
// that returns 0 (one system call in four per file) is skipped. True of
// stat and status (one seq_file record, which seq_file grows its buffer
// for) and of cmdline and environ (they loop over the pages until the
// buffer is full). NOT of files of many records (children, uid_map...):
// seq_file stops at a page boundary between records.
func (r *Reader) readFile(p string) ([]byte, error) { return r.read(p, false) }

func (r *Reader) read(p string, whole bool) ([]byte, error) {
	return r.readAt(unix.AT_FDCWD, p, p, whole)
}

// readAt is read of name relative to dirfd; p names the file in errors.
func (r *Reader) readAt(dirfd int, name, p string, whole bool) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathErr("open", p, err)
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(r.buf) {
			r.buf = append(r.buf, make([]byte, len(r.buf))...)
		}
		m, err := unix.Read(fd, r.buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, pathErr("read", p, err)
		}
		n += m
		if m == 0 || whole && n < len(r.buf) {
			return r.buf[:n], nil
		}
	}
}

func pathErr(op, p string, err error) error {
	if err == unix.ENOENT || err == unix.ESRCH {
		return fmt.Errorf("%s %s: %w (%w)", op, p, ErrGone, err)
	}
	return &os.PathError{Op: op, Path: p, Err: err}
}

// Status reads /proc/PID/status.
func (r *Reader) Status(pid int) (Status, error) {
	return r.status(r.path(pid, "status"))
}

// TaskStatus reads /proc/PID/task/TID/status.
func (r *Reader) TaskStatus(pid, tid int) (Status, error) {
	return r.status(r.taskPath(pid, tid, "status"))
}

func (r *Reader) status(p string) (Status, error) {
	return r.statusAt(unix.AT_FDCWD, p, p)
}

func (r *Reader) statusAt(dirfd int, name, p string) (Status, error) {
	b, err := r.readAt(dirfd, name, p, true)
	if err != nil {
		return Status{}, err
	}
	s, err := ParseStatus(b)
	if err != nil {
		return Status{}, fmt.Errorf("parse %s: %w", p, err)
	}
	return s, nil
}

// Stat reads /proc/PID/stat.
func (r *Reader) Stat(pid int) (Stat, error) {
	p := r.path(pid, "stat")
	return r.statAt(unix.AT_FDCWD, p, p)
}

func (r *Reader) statAt(dirfd int, name, p string) (Stat, error) {
	b, err := r.readAt(dirfd, name, p, true)
	if err != nil {
		return Stat{}, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("parse %s: %w", p, err)
	}
	return s, nil
}

// Syscall is the number of the system call process pid is blocked in
// (the first field of /proc/PID/syscall), -1 when it is running in user
// space ("running") or not in a system call.
func (r *Reader) Syscall(pid int) (int, error) {
	b, err := r.readFile(r.path(pid, "syscall"))
	if err != nil {
		return -1, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1, nil
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return -1, nil // "running"
	}
	return n, nil
}

// Cmdline reads /proc/PID/cmdline as argv.
func (r *Reader) Cmdline(pid int) ([]string, error) {
	b, err := r.read(r.path(pid, "cmdline"), true)
	if err != nil {
		return nil, err
	}
	return SplitNUL(b), nil
}

// Environ reads /proc/PID/environ: the environment the process was started
// with (execve), not what it changed since.
func (r *Reader) Environ(pid int) ([]string, error) {
	b, err := r.read(r.path(pid, "environ"), true)
	if err != nil {
		return nil, err
	}
	return SplitNUL(b), nil
}

// SplitNUL splits NUL-terminated strings; a missing final NUL is tolerated.
// The strings are parts of one string made of b: an environment is dozens
// of strings, and a big tree's dump reads thousands of environments, so
// one allocation each instead of dozens.
func SplitNUL(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	b = bytes.TrimSuffix(b, []byte{0})
	out := make([]string, 0, bytes.Count(b, []byte{0})+1)
	s := string(b)
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+1:]
	}
}

// Link reads the symlink /proc/PID/NAME (exe, cwd, root, ns/...).
func (r *Reader) Link(pid int, name string) (string, error) {
	p := r.path(pid, name)
	return r.linkAt(unix.AT_FDCWD, p, p)
}

func (r *Reader) linkAt(dirfd int, name, p string) (string, error) {
	buf := r.buf[:cap(r.buf)]
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", pathErr("readlink", p, err)
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// NSInode returns the inode of /proc/PID/ns/NAME from its link text
// ("pid:[4026531836]") without opening it. Inodes identify namespaces only
// while they exist; callers that need more hold an fd (OpenNS).
func (r *Reader) NSInode(pid int, name string) (uint64, error) {
	s, err := r.Link(pid, "ns/"+name)
	if err != nil {
		return 0, err
	}
	return ParseNSLink(nsLinkKind(name), s)
}

// nsLinkKind is the kind a /proc/PID/ns link names: pid_for_children
// links read "pid:[...]".
func nsLinkKind(name string) string { return strings.TrimSuffix(name, "_for_children") }

// ParseNSLink parses "KIND:[INODE]".
func ParseNSLink(kind, s string) (uint64, error) {
	rest, ok := bytesCutPrefix(s, kind+":[")
	if !ok || len(rest) < 2 || rest[len(rest)-1] != ']' {
		return 0, fmt.Errorf("bad namespace link %q for %s", s, kind)
	}
	return strconv.ParseUint(rest[:len(rest)-1], 10, 64)
}

func bytesCutPrefix(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return s, false
	}
	return s[len(prefix):], true
}

// OpenNS opens /proc/PID/ns/NAME (O_RDONLY|O_CLOEXEC) for the namespace
// ioctls or setns. The caller closes the fd.
func (r *Reader) OpenNS(pid int, name string) (int, error) {
	p := r.path(pid, "ns/"+name)
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, pathErr("open", p, err)
	}
	return fd, nil
}

// Children reads /proc/PID/task/TID/children: the pids of the processes
// whose parent is thread tid (a child belongs to the thread that forked it,
// so a process's children are the union over its threads). The kernel lists
// them reliably only while they are frozen or stopped. Kernels built
// without CONFIG_PROC_CHILDREN lack the file: see HasChildren.
func (r *Reader) Children(pid, tid int) ([]int, error) {
	p := r.taskPath(pid, tid, "children")
	return r.childrenAt(unix.AT_FDCWD, p, p)
}

func (r *Reader) childrenAt(dirfd int, name, p string) ([]int, error) {
	b, err := r.readAt(dirfd, name, p, false)
	if err != nil {
		return nil, err
	}
	var out []int
	for len(b) > 0 {
		i := bytes.IndexByte(b, ' ')
		if i < 0 {
			i = len(b)
		}
		if f := bytes.TrimSpace(b[:i]); len(f) > 0 {
			n, err := atoi(f)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("parse %s: bad pid %q", p, f)
			}
			out = append(out, n)
		}
		b = b[min(i+1, len(b)):]
	}
	return out, nil
}

// Descendants lists the processes below pid (not pid itself), parents
// before their children, through the children files of all their threads.
// Unless the tree is frozen, a task that forks or is re-parented meanwhile
// may be missed: the caller looks again.
func (r *Reader) Descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		tids, _ := r.Tasks(p)
		for _, tid := range tids {
			kids, _ := r.Children(p, tid)
			out = append(out, kids...)
			queue = append(queue, kids...)
		}
	}
	return out
}

// SelfChildren lists the caller's children, live or dead, from the
// children files of all its threads under self/.
func (r *Reader) SelfChildren() []int {
	var out []int
	tasks, _ := os.ReadDir(r.Root + "/self/task")
	for _, tk := range tasks {
		p := r.Root + "/self/task/" + tk.Name() + "/children"
		kids, _ := r.childrenAt(unix.AT_FDCWD, p, p)
		out = append(out, kids...)
	}
	return out
}

// HasChildren reports whether this kernel has the children files
// (CONFIG_PROC_CHILDREN), probing the caller's own thread.
func (r *Reader) HasChildren() bool {
	return unix.Access(r.Root+"/thread-self/children", unix.R_OK) == nil
}

// Pids lists the thread-group ids in the procfs (its numeric entries).
func (r *Reader) Pids() ([]int, error) {
	return r.numericDir(r.Root)
}

// Tasks lists the thread ids of process pid (/proc/PID/task).
func (r *Reader) Tasks(pid int) ([]int, error) {
	return r.numericDir(r.path(pid, "task"))
}

func (r *Reader) numericDir(p string) ([]int, error) {
	return r.numericDirAt(unix.AT_FDCWD, p, p)
}

func (r *Reader) numericDirAt(dirfd int, name, p string) ([]int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathErr("open", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", p, err)
	}
	out := make([]int, 0, len(names))
	for _, n := range names {
		if id, err := strconv.Atoi(n); err == nil && id > 0 {
			out = append(out, id)
		}
	}
	return out, nil
}

// IDMapEntry is one line of uid_map or gid_map.
type IDMapEntry struct{ Inside, Outside, Count uint32 }

// IDMap reads /proc/PID/uid_map or gid_map (name), as seen from the
// reader's user namespace.
func (r *Reader) IDMap(pid int, name string) ([]IDMapEntry, error) {
	p := r.path(pid, name)
	b, err := r.readFile(p)
	if err != nil {
		return nil, err
	}
	m, err := ParseIDMap(b)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", p, err)
	}
	return m, nil
}

// ParseIDMap parses "inside outside count" lines.
func ParseIDMap(b []byte) ([]IDMapEntry, error) {
	var out []IDMapEntry
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		f := bytes.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("bad id map line %q", line)
		}
		var v [3]uint32
		for i := range f {
			x, err := strconv.ParseUint(string(f[i]), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("bad id map line %q: %w", line, err)
			}
			v[i] = uint32(x)
		}
		out = append(out, IDMapEntry{v[0], v[1], v[2]})
	}
	return out, nil
}

// SetgroupsAllowed reads /proc/PID/setgroups ("allow" or "deny").
func (r *Reader) SetgroupsAllowed(pid int) (bool, error) {
	b, err := r.readFile(r.path(pid, "setgroups"))
	if err != nil {
		return false, err
	}
	switch string(bytes.TrimSpace(b)) {
	case "allow":
		return true, nil
	case "deny":
		return false, nil
	}
	return false, fmt.Errorf("bad setgroups %q", b)
}

// Cgroup2 returns the cgroup v2 path of process pid (the "0::" line of
// /proc/PID/cgroup), "" if it has none.
func (r *Reader) Cgroup2(pid int) (string, error) {
	b, err := r.readFile(r.path(pid, "cgroup"))
	if err != nil {
		return "", err
	}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(rest), nil
		}
	}
	return "", nil
}

// ReadSmallFile reads any small file through the reader's buffer, returning
// a copy.
func (r *Reader) ReadSmallFile(p string) ([]byte, error) {
	b, err := r.readFile(p)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}
