package procfs

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// Proc is one process's /proc/PID directory held open. Reads through it
// walk shorter paths than the Reader's (no lookup and revalidation of
// /proc/PID for each file: a tenth of a 10,000-task dump's kernel time),
// and they all name the process it was opened for: once that process is
// reaped they fail with ErrGone, even if its pid is reused. Not safe for
// concurrent use (it reads into its Reader's buffer).
type Proc struct {
	r   *Reader
	pid int
	fd  int
	dir string // for error messages
}

// Open opens /proc/PID. The caller closes the Proc.
func (r *Reader) Open(pid int) (*Proc, error) {
	dir := r.Root + "/" + strconv.Itoa(pid)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathErr("open", dir, err)
	}
	return &Proc{r: r, pid: pid, fd: fd, dir: dir}, nil
}

// Close releases the directory.
func (p *Proc) Close() error { return unix.Close(p.fd) }

// Pid is the process's pid in the Reader's procfs.
func (p *Proc) Pid() int { return p.pid }

// Stat reads stat.
func (p *Proc) Stat() (Stat, error) { return p.r.statAt(p.fd, "stat", p.dir+"/stat") }

// Status reads status.
func (p *Proc) Status() (Status, error) { return p.r.statusAt(p.fd, "status", p.dir+"/status") }

// TaskStatus reads task/TID/status.
func (p *Proc) TaskStatus(tid int) (Status, error) {
	name := "task/" + strconv.Itoa(tid) + "/status"
	return p.r.statusAt(p.fd, name, p.dir+"/"+name)
}

// TaskStat reads task/TID/stat.
func (p *Proc) TaskStat(tid int) (Stat, error) {
	name := "task/" + strconv.Itoa(tid) + "/stat"
	return p.r.statAt(p.fd, name, p.dir+"/"+name)
}

// Children reads task/TID/children (see Reader.Children).
func (p *Proc) Children(tid int) ([]int, error) {
	name := "task/" + strconv.Itoa(tid) + "/children"
	return p.r.childrenAt(p.fd, name, p.dir+"/"+name)
}

// Cmdline reads cmdline as argv.
func (p *Proc) Cmdline() ([]string, error) {
	b, err := p.r.readAt(p.fd, "cmdline", p.dir+"/cmdline", true)
	if err != nil {
		return nil, err
	}
	return SplitNUL(b), nil
}

// Environ reads environ (see Reader.Environ).
func (p *Proc) Environ() ([]string, error) {
	b, err := p.r.readAt(p.fd, "environ", p.dir+"/environ", true)
	if err != nil {
		return nil, err
	}
	return SplitNUL(b), nil
}

// Link reads the symlink NAME (exe, cwd, root, ns/...).
func (p *Proc) Link(name string) (string, error) {
	return p.r.linkAt(p.fd, name, p.dir+"/"+name)
}

// SameFile reports whether the magic link NAME (root, cwd, exe) leads to
// the same file as path does for the caller: the link's text cannot say
// (a root in another mount namespace reads as "/").
func (p *Proc) SameFile(name, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstatat(p.fd, name, &a, 0); err != nil {
		return false, pathErr("stat", p.dir+"/"+name, err)
	}
	if err := unix.Stat(path, &b); err != nil {
		return false, pathErr("stat", path, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// Alive reports whether the process still has its pid namespace link,
// which every process has until it is reaped (zombies included).
func (p *Proc) Alive() bool {
	_, err := p.Link("ns/pid")
	return err == nil
}

// NSInode is Reader.NSInode through the open directory.
func (p *Proc) NSInode(name string) (uint64, error) {
	s, err := p.Link("ns/" + name)
	if err != nil {
		return 0, err
	}
	return ParseNSLink(nsLinkKind(name), s)
}

// Tasks lists the thread ids (task/).
func (p *Proc) Tasks() ([]int, error) { return p.r.numericDirAt(p.fd, "task", p.dir+"/task") }

// Threads counts the process's threads from the link count of task/
// (procfs gives it 2 + the number of threads): one stat, where stat or
// status would have the kernel format a whole file.
func (p *Proc) Threads() (int, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(p.fd, "task", &st, 0); err != nil {
		return 0, pathErr("stat", p.dir+"/task", err)
	}
	if st.Nlink < 3 {
		return 0, fmt.Errorf("stat %s: link count %d, want 2 + threads", p.dir+"/task", st.Nlink)
	}
	return int(st.Nlink) - 2, nil
}
