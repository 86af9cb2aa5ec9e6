package state

import (
	"errors"
	"fmt"

	"github.com/nsinit/nsinit/proto/imagepb"
	"golang.org/x/sys/unix"
)

// Pipes between the tree's tasks: recorded when the tree holds both ends
// (a pipe with an end outside the tree would come back dead: its fds 0-2
// become the restorer's, as other stdio does, any other fd is refused),
// with the bytes in flight, read without taking them (tee); restored as
// one new pipe per recorded one, filled again, whose open descriptions
// the tasks inherit through their exec.

// maxPipeSize bounds a recorded pipe's capacity: the default
// /proc/sys/fs/pipe-max-size.
const maxPipeSize = 1 << 20

// pipeEnd is a pipe descriptor seen while the tree is read.
type pipeEnd struct {
	pid int
	of  *imagepb.OpenFile
}

// pipeSet collects the tree's pipe descriptors by pipe (inode).
type pipeSet map[uint64][]pipeEnd

// resolve keeps the pipes whose both ends the tree holds, reading their
// contents, and turns the others' descriptors into the restorer's stdio
// (fds 0-2) or refuses them.
func (ps pipeSet) resolve() ([]*imagepb.Pipe, error) {
	var out []*imagepb.Pipe
	for id, ends := range ps {
		var r *pipeEnd // tee reads from a read end
		w := false
		for i, e := range ends {
			switch e.of.GetFlags() & unix.O_ACCMODE {
			case unix.O_RDONLY:
				r = &ends[i]
			case unix.O_WRONLY:
				w = true
			}
		}
		if r == nil || !w {
			for _, e := range ends {
				if e.of.GetFd() > 2 {
					return nil, fmt.Errorf("%w: pid %d fd %d is pipe:[%d], whose other end is outside the tree", ErrUnsupported, e.pid, e.of.GetFd(), id)
				}
				e.of.Pipe = 0 // the restorer's own stdio
			}
			continue
		}
		p, err := readPipe(r.pid, int(r.of.GetFd()))
		if err != nil {
			return nil, fmt.Errorf("pipe:[%d] of pid %d fd %d: %w", id, r.pid, r.of.GetFd(), err)
		}
		p.Id = id
		out = append(out, p)
	}
	return out, nil
}

// readPipe takes a copy of a task's pipe descriptor (pidfd_getfd) and
// duplicates what is buffered in it into a pipe of our own (tee), which
// leaves the task's pipe as it was.
func readPipe(pid, fd int) (*imagepb.Pipe, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(pidfd)
	src, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(src)
	size, err := unix.FcntlInt(uintptr(src), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return nil, err
	}
	if size > maxPipeSize {
		return nil, fmt.Errorf("%w: a pipe of %d bytes", ErrUnsupported, size)
	}
	var tmp [2]int
	if err := unix.Pipe2(tmp[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	defer unix.Close(tmp[0])
	defer unix.Close(tmp[1])
	if _, err := unix.FcntlInt(uintptr(tmp[1]), unix.F_SETPIPE_SZ, size); err != nil {
		return nil, err
	}
	n, err := unix.Tee(src, tmp[1], size, unix.SPLICE_F_NONBLOCK)
	if errors.Is(err, unix.EAGAIN) {
		n, err = 0, nil // empty
	}
	if err != nil {
		return nil, fmt.Errorf("tee: %w", err)
	}
	data := make([]byte, n)
	for got := 0; got < len(data); {
		m, err := unix.Read(tmp[0], data[got:])
		if err != nil {
			return nil, err
		}
		got += m
	}
	return &imagepb.Pipe{Size: uint32(size), Data: data}, nil
}

// pipeKey names an open description to restore: the same pipe, access
// mode and O_NONBLOCK.
type pipeKey struct {
	pipe  uint64
	flags uint32
}

func keyOf(of *imagepb.OpenFile) pipeKey {
	return pipeKey{of.GetPipe(), of.GetFlags() & (unix.O_ACCMODE | unix.O_NONBLOCK)}
}

// restoredPipes is what makePipes made: a descriptor of this process at
// base or above, without O_CLOEXEC, for each description the tasks need.
type restoredPipes struct {
	base int
	fds  map[pipeKey]int
}

func (rp *restoredPipes) close() {
	for _, fd := range rp.fds {
		unix.Close(fd)
	}
}

// makePipes creates the recorded pipes, fills them, and opens each
// description the tasks hold at base or above, without O_CLOEXEC: the
// parked tasks share this fd table, so each exec hands them on, and the
// task's own files step moves them to their numbers.
func makePipes(s *imagepb.StateImage, base int) (*restoredPipes, error) {
	rp := &restoredPipes{base: base, fds: map[pipeKey]int{}}
	ends := map[uint64][2]int{}
	fail := func(err error) (*restoredPipes, error) {
		rp.close()
		for _, e := range ends {
			unix.Close(e[0])
			unix.Close(e[1])
		}
		return nil, err
	}
	for _, p := range s.GetPipes() {
		var fds [2]int
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			return fail(err)
		}
		ends[p.GetId()] = fds
		if _, err := unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, int(p.GetSize())); err != nil {
			return fail(fmt.Errorf("pipe of %d bytes: %w", p.GetSize(), err))
		}
		for d := p.GetData(); len(d) > 0; {
			n, err := unix.Write(fds[1], d)
			if err != nil {
				return fail(err)
			}
			d = d[n:]
		}
	}
	for _, ts := range s.GetTasks() {
		for _, of := range ts.GetFiles() {
			k := keyOf(of)
			if k.pipe == 0 || rp.fds[k] != 0 {
				continue
			}
			// A description of its own, as the task had it: opened
			// again through /proc, as a FIFO is.
			e := ends[k.pipe]
			f, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", e[0]), int(k.flags)|unix.O_CLOEXEC, 0)
			if err != nil {
				return fail(err)
			}
			fd, err := unix.FcntlInt(uintptr(f), unix.F_DUPFD, base) // no O_CLOEXEC
			unix.Close(f)
			if err != nil {
				return fail(fmt.Errorf("move a pipe to fd %d or above: %w", base, err))
			}
			rp.fds[k] = fd
		}
	}
	for _, e := range ends {
		unix.Close(e[0])
		unix.Close(e[1])
	}
	return rp, nil
}
