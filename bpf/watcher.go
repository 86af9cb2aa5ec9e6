package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/nsinit/nsinit/internal/nsid"
	"golang.org/x/sys/unix"
)

// HostPidNSInode is the fixed inode number of the initial (host) pid
// namespace (PROC_PID_INIT_INO). It is never watched whole: every fork on the
// machine would count.
const HostPidNSInode = 0xEFFFFFFC

// Counter indexes, as in trace.bpf.c's enum counter.
const (
	countEvents = iota
	countDropped
	countTgidFull
	numCounters
)

// Watcher owns the loaded eBPF programs and maps. Load it once (about 100
// ms, mostly the kernel parsing BTF); watching, attaching and resetting are
// then a few syscalls each. A Watcher is not safe for concurrent use, except
// that Read may run in its own goroutine while the owner waits.
type Watcher struct {
	objs   traceObjects
	links  []link.Link
	reader *ringbuf.Reader
	// pinned holds a duplicate fd of every watched pid namespace, by inode:
	// a namespace's inode number is recycled once it dies, and an open fd
	// keeps it alive, so the number in watched_ns can only mean this one.
	pinned map[uint32]*os.File
	rec    ringbuf.Record
}

// Load loads the programs and maps into the kernel, not attached yet.
// Errors wrap ebpf.ErrNotSupported when the kernel lacks BTF or tp_btf, and
// unix.EPERM when CAP_BPF and CAP_PERFMON are missing.
func Load() (*Watcher, error) {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("load bpf programs: kernel BTF missing (/sys/kernel/btf/vmlinux): %w", ebpf.ErrNotSupported)
	}
	w := &Watcher{pinned: map[uint32]*os.File{}}
	if err := loadTraceObjects(&w.objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("load bpf programs (needs CAP_BPF and CAP_PERFMON): %w", err)
		}
		return nil, fmt.Errorf("load bpf programs: %w", err)
	}
	r, err := ringbuf.NewReader(w.objs.Events)
	if err != nil {
		w.objs.Close()
		return nil, fmt.Errorf("open bpf ring buffer: %w", err)
	}
	w.reader = r
	return w, nil
}

// Close detaches the programs and releases everything.
func (w *Watcher) Close() error {
	w.Detach()
	w.unpinAll()
	err := w.reader.Close()
	return errors.Join(err, w.objs.Close())
}

// Attach attaches the three programs (no-op when attached).
func (w *Watcher) Attach() error {
	if w.links != nil {
		return nil
	}
	for _, p := range []*ebpf.Program{w.objs.OnFork, w.objs.OnExit, w.objs.OnExec} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			w.Detach()
			return fmt.Errorf("attach bpf program %s: %w", p, err)
		}
		w.links = append(w.links, l)
	}
	return nil
}

// Detach detaches the programs; counters and records stay readable.
func (w *Watcher) Detach() {
	for _, l := range w.links {
		l.Close()
	}
	w.links = nil
}

// WatchNS watches the pid namespace open at fd (for example
// /proc/PID/ns/pid) and every namespace nested below it. The caller keeps
// its fd; the watcher pins the namespace with a duplicate until Reset or
// Close. It returns the namespace's inode number.
func (w *Watcher) WatchNS(fd int) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("watch pid namespace fd %d: %w", fd, err)
	}
	typ, err := nsid.Type(fd)
	if err != nil {
		return 0, fmt.Errorf("watch pid namespace fd %d: not a namespace: %w", fd, err)
	}
	if typ != unix.CLONE_NEWPID {
		return 0, fmt.Errorf("watch pid namespace fd %d: namespace type %#x is not a pid namespace", fd, typ)
	}
	inum := uint32(st.Ino)
	if inum == HostPidNSInode {
		return 0, fmt.Errorf("watch pid namespace fd %d: refusing the host pid namespace (it would count every fork on the machine); watch its tasks by pid instead", fd)
	}
	if _, ok := w.pinned[inum]; ok {
		return inum, nil
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return 0, fmt.Errorf("watch pid namespace fd %d: pin: %w", fd, err)
	}
	f := os.NewFile(uintptr(dup), fmt.Sprintf("pidns:[%d]", inum))
	if err := w.objs.WatchedNs.Put(inum, traceNsValue{}); err != nil {
		f.Close()
		return 0, fmt.Errorf("watch pid namespace %d: %w", inum, err)
	}
	w.pinned[inum] = f
	return inum, nil
}

// WatchTgid watches the process with this level-0 (host) pid: its forks,
// exits and execs, and those of every process it forks from now on.
// Level-0 pids are the kernel's, so this needs nsinit in the host pid
// namespace.
func (w *Watcher) WatchTgid(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("watch pid %d: not a pid", pid)
	}
	if err := hostPidNS(); err != nil {
		return fmt.Errorf("watch pid %d: %w", pid, err)
	}
	if err := w.objs.WatchedTgids.Put(uint32(pid), uint32(1)); err != nil {
		return fmt.Errorf("watch pid %d: %w", pid, err)
	}
	return nil
}

func hostPidNS() error {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return fmt.Errorf("find own pid namespace: %w", err)
	}
	if st.Ino != HostPidNSInode {
		return fmt.Errorf("level-0 pids need nsinit in the host pid namespace (own pid namespace is %d)", st.Ino)
	}
	return nil
}

// Reset stops watching everything, unpins the namespaces, zeroes the
// counters and discards pending records. It does not detach.
func (w *Watcher) Reset() error {
	var errs []error
	errs = append(errs, clearMap(w.objs.WatchedNs), clearMap(w.objs.WatchedTgids))
	w.unpinAll()
	for i := uint32(0); i < numCounters; i++ {
		errs = append(errs, w.objs.Counters.Put(i, uint64(0)))
	}
	// Discard what is pending.
	w.reader.SetDeadline(time.Now())
	for {
		if err := w.reader.ReadInto(&w.rec); err != nil {
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reset bpf watcher: %w", err)
	}
	return nil
}

func (w *Watcher) unpinAll() {
	for k, f := range w.pinned {
		f.Close()
		delete(w.pinned, k)
	}
}

func clearMap(m *ebpf.Map) error {
	var keys []uint32
	var key uint32
	var prev any // nil: start from the first key
	for {
		err := m.NextKey(prev, &key)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", m, err)
		}
		keys = append(keys, key)
		k := key
		prev = &k
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear %s: %w", m, err)
		}
	}
	return nil
}

// Counts are the exact in-kernel counters since the last Reset.
type Counts struct {
	Events   uint64 // matched events
	Dropped  uint64 // matched events whose record did not fit the ring buffer
	TgidFull uint64 // forked children that could not be watched (map full)
}

// Counts reads the counters.
func (w *Watcher) Counts() (Counts, error) {
	var v [numCounters]uint64
	for i := range v {
		if err := w.objs.Counters.Lookup(uint32(i), &v[i]); err != nil {
			return Counts{}, fmt.Errorf("read bpf counter %d: %w", i, err)
		}
	}
	return Counts{Events: v[countEvents], Dropped: v[countDropped], TgidFull: v[countTgidFull]}, nil
}

// NSEvents is the event count of a watched namespace (by inode): events of
// tasks in it or in a namespace nested below it.
func (w *Watcher) NSEvents(inum uint32) (uint64, error) {
	var v traceNsValue
	if err := w.objs.WatchedNs.Lookup(inum, &v); err != nil {
		return 0, fmt.Errorf("read event count of pid namespace %d: %w", inum, err)
	}
	return v.Events, nil
}

// ErrNoEvent is returned by Read when no record arrived before the deadline.
var ErrNoEvent = errors.New("no event before deadline")

// Read returns the next record, waiting until deadline (a zero deadline
// waits forever). The programs wake the reader only when 64 KiB are pending,
// so a live reader should poll with a short deadline (~20 ms).
func (w *Watcher) Read(deadline time.Time) (Event, error) {
	w.reader.SetDeadline(deadline)
	if err := w.reader.ReadInto(&w.rec); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, ErrNoEvent
		}
		return Event{}, fmt.Errorf("read bpf ring buffer: %w", err)
	}
	return decodeEvent(w.rec.RawSample)
}

func decodeEvent(raw []byte) (Event, error) {
	var e traceEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode bpf event (%d bytes): %w", len(raw), err)
	}
	if e.Level >= uint32(len(e.Pids)) {
		return Event{}, fmt.Errorf("decode bpf event: level %d out of range", e.Level)
	}
	ev := Event{
		Kind:       Kind(e.Kind),
		Thread:     e.Flags&flagThread != 0,
		ByNS:       e.Flags&flagByNS != 0,
		ByTgid:     e.Flags&flagByTgid != 0,
		GroupDead:  e.Flags&flagGroupDead != 0,
		Tgid:       int(e.Tgid),
		ParentTid:  int(e.Ptid),
		ParentTgid: int(e.Ptgid),
		NSInode:    e.NsInum,
		Pids:       make([]int, e.Level+1),
	}
	for i := range ev.Pids {
		ev.Pids[i] = int(e.Pids[i])
	}
	if ev.Kind == Exit {
		ws := int(e.ExitCode)
		ev.ExitStatus = &ws
	}
	comm := make([]byte, 0, len(e.Comm))
	for _, c := range e.Comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	ev.Comm = string(comm)
	return ev, nil
}
