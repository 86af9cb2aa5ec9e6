package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nsinit/nsinit/bpf"
	"github.com/nsinit/nsinit/internal/procfs"
)

func init() {
	register("trace", "print fork/exit/exec of a tree as they happen (eBPF)", runTrace)
}

// pidList is a repeatable -t flag.
type pidList []int

func (p *pidList) String() string { return fmt.Sprint(*p) }
func (p *pidList) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return fmt.Errorf("not a pid: %q", s)
	}
	*p = append(*p, n)
	return nil
}

// strList is a repeatable --ns flag.
type strList []string

func (l *strList) String() string     { return fmt.Sprint(*l) }
func (l *strList) Set(s string) error { *l = append(*l, s); return nil }

func runTrace(args []string) int {
	var (
		pids    pidList
		nsPaths strList
		jsonOut bool
	)
	fs := newFlags("nsinit trace", "nsinit trace (-t PID | --ns PATH)... [--json]",
		"Prints one line per fork, exit and exec with the pid at every namespace level\n"+
			"(outermost first), the parent and the exit status, until SIGINT or SIGTERM.")
	fs.Var(&pids, "t,tree", "PID", "trace the tree of process PID (host pid; repeatable): it, its descendants, the pid namespaces they head, and what they fork from now on")
	fs.Var(&nsPaths, "ns", "PATH", "trace every task in the pid namespace at PATH (e.g. /proc/PID/ns/pid) or nested below it (repeatable)")
	fs.Bool(&jsonOut, "json", "print JSON lines instead of text")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	if len(pids) == 0 && len(nsPaths) == 0 {
		return fs.Fail("-t PID or --ns PATH is required")
	}
	if len(fs.Args()) > 0 {
		return fs.Fail("unexpected argument %q", fs.Args()[0])
	}
	if err := trace(pids, nsPaths, jsonOut); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit trace: %v\n", err)
		return exitStatus(err)
	}
	return 0
}

func trace(pids []int, nsPaths []string, jsonOut bool) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	w, err := bpf.Load()
	if err != nil {
		return err
	}
	defer w.Close()
	for _, p := range nsPaths {
		fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open pid namespace %s: %w", p, err)
		}
		_, err = w.WatchNS(fd) // the watcher pins its own copy
		syscall.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	for _, pid := range pids {
		if err := watchTree(w, pid); err != nil {
			return err
		}
	}
	if err := w.Attach(); err != nil {
		return err
	}

	enc := json.NewEncoder(os.Stdout)
	print := func(e bpf.Event) error {
		if jsonOut {
			return enc.Encode(e)
		}
		_, err := fmt.Println(e)
		return err
	}
	for {
		select {
		case <-sigs:
			w.Detach()
			for {
				e, err := w.Read(time.Now())
				if err != nil {
					break
				}
				print(e)
			}
			if c, err := w.Counts(); err == nil && c.Dropped > 0 {
				fmt.Fprintf(os.Stderr, "nsinit trace: %d of %d events lost (ring buffer full)\n", c.Dropped, c.Events)
			}
			return nil
		default:
		}
		// The programs wake the reader only when 64 KiB are pending; poll.
		e, err := w.Read(time.Now().Add(20 * time.Millisecond))
		if errors.Is(err, bpf.ErrNoEvent) {
			continue
		}
		if err != nil {
			return err
		}
		if err := print(e); err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
}

// watchTree watches process pid, its live descendants, and the pid
// namespaces whose init is among them (tasks injected into such a namespace
// from outside count too). What they fork from now on is watched by the
// programs themselves. A task forked while this runs is caught by its
// parent's watch once attached; this is a tracer, not a consistency check.
func watchTree(w *bpf.Watcher, pid int) error {
	proc := procfs.New("/proc")
	all, err := proc.Pids()
	if err != nil {
		return err
	}
	children := map[int][]int{}
	for _, p := range all {
		st, err := proc.Stat(p)
		if err != nil {
			continue // gone
		}
		children[st.PPid] = append(children[st.PPid], p)
	}
	root, err := proc.Stat(pid)
	if err != nil {
		return fmt.Errorf("trace pid %d: %w", pid, err)
	}
	// pid heads a pid namespace of its own (a container's init): watch it.
	own, err1 := proc.NSInode(pid, "pid")
	parent, err2 := proc.NSInode(root.PPid, "pid")
	if err1 == nil && own != bpf.HostPidNSInode && (err2 != nil || own != parent) {
		if err := watchNSOf(w, proc, pid); err != nil {
			return err
		}
	}
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if err := w.WatchTgid(p); err != nil {
			return err
		}
		own, err1 := proc.NSInode(p, "pid")
		for _, c := range children[p] {
			queue = append(queue, c)
			if ns, err := proc.NSInode(c, "pid"); err1 == nil && err == nil && ns != own && ns != bpf.HostPidNSInode {
				if err := watchNSOf(w, proc, c); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func watchNSOf(w *bpf.Watcher, proc *procfs.Reader, pid int) error {
	fd, err := proc.OpenNS(pid, "pid")
	if err != nil {
		return fmt.Errorf("trace pid namespace of %d: %w", pid, err)
	}
	defer syscall.Close(fd)
	if _, err := w.WatchNS(fd); err != nil {
		return fmt.Errorf("trace pid namespace of %d: %w", pid, err)
	}
	return nil
}
