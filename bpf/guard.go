package bpf

import (
	"errors"
	"fmt"
	"time"
)

// Guard detects a dump that raced with the tree: Arm before reading the
// tree, Disarm after; an empty report means no watched task forked, exited
// or exec'd in between. It satisfies dump.Guard.
//
// Its contract (docs/ebpf.md): a fork, exit or exec of a watched task is
// reported when its tracepoint fires after Arm has returned and before
// Disarm is called. So every exit that begins after Arm (a task /proc
// showed without PF_EXITING after Arm) is reported, and every fork and exec
// whose task /proc did not yet show after Arm. A task already in do_exit
// when Arm returns may have passed its tracepoint and still show running:
// telling such tasks is the reader's job (dump refuses them). The guard
// says nothing about events before Arm, whatever /proc shows afterwards. The programs are loaded
// once by NewGuard; Arm and Disarm are a few syscalls each and can be
// repeated for dump retries. The programs are attached only while armed, so
// an idle guard costs the machine nothing.
type Guard struct {
	w     *Watcher
	armed bool
}

// NewGuard loads the eBPF programs (about 100 ms). The error wraps
// ebpf.ErrNotSupported or unix.EPERM when eBPF can't be used. Inside a pid
// namespace other than the host's it fails at once: the programs see the
// kernel's level-0 pids, which the dump there cannot name.
func NewGuard() (*Guard, error) {
	if err := hostPidNS(); err != nil {
		return nil, fmt.Errorf("dump guard: %w", err)
	}
	w, err := Load()
	if err != nil {
		return nil, fmt.Errorf("dump guard: %w", err)
	}
	return &Guard{w: w}, nil
}

// Arm starts counting fork, exit and exec events of the given processes
// (level-0 pids; their children forked from now on count too) and of every
// task in the given pid namespaces or below them (fds of /proc/PID/ns/pid,
// owned by the caller; the guard pins its own duplicates until Disarm).
func (g *Guard) Arm(pids []int, pidnsFDs []int) error {
	if g.armed {
		return errors.New("arm dump guard: already armed")
	}
	if err := g.arm(pids, pidnsFDs); err != nil {
		g.w.Detach()
		g.w.Reset()
		return fmt.Errorf("arm dump guard: %w", err)
	}
	g.armed = true
	return nil
}

func (g *Guard) arm(pids []int, pidnsFDs []int) error {
	if err := g.w.Reset(); err != nil {
		return err
	}
	for _, fd := range pidnsFDs {
		if _, err := g.w.WatchNS(fd); err != nil {
			return err
		}
	}
	for _, pid := range pids {
		if err := g.w.WatchTgid(pid); err != nil {
			return err
		}
	}
	return g.w.Attach()
}

// Disarm stops counting and reports what moved since Arm, one line per
// event ("fork 1234 -> 1240 [1240 3] comm=sh", "exit 1238 [1238] status
// 0x100 comm=sh"). Empty means nothing moved. The in-kernel counter is the
// authority: records lost to a full ring buffer are reported as a count.
func (g *Guard) Disarm() ([]string, error) {
	if !g.armed {
		return nil, errors.New("disarm dump guard: not armed")
	}
	g.armed = false
	g.w.Detach()
	defer g.w.Reset()
	c, err := g.w.Counts()
	if err != nil {
		return nil, fmt.Errorf("disarm dump guard: %w", err)
	}
	var moved []string
	var received uint64
	deadline := time.Now()
	for received+c.Dropped < c.Events {
		e, err := g.w.Read(deadline)
		if errors.Is(err, ErrNoEvent) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("disarm dump guard: %w", err)
		}
		received++
		moved = append(moved, e.String())
	}
	if lost := c.Events - received; lost > 0 {
		moved = append(moved, fmt.Sprintf("%d more events not recorded (ring buffer full)", lost))
	}
	if c.TgidFull > 0 {
		return moved, fmt.Errorf("disarm dump guard: %d forked children could not be watched (pid map full): the check is incomplete", c.TgidFull)
	}
	return moved, nil
}

// Close disarms (if armed) and unloads the programs.
func (g *Guard) Close() error {
	if g.armed {
		g.armed = false
	}
	return g.w.Close()
}
