package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// SigAction is the kernel's struct sigaction of one signal on x86-64.
type SigAction struct {
	Handler, Flags, Restorer, Mask uint64
}

// TaskSignals is what /proc does not show of a process's signal state
// (and its neighbours in task_struct): every handler, the alternate
// signal stack, the clear_child_tid address and the parent-death signal.
// The last three are its leader thread's.
type TaskSignals struct {
	Actions        [64]SigAction // signal n at n-1
	AltSP, AltSize uint64
	AltFlags       uint32
	PdeathSignal   uint32
	ClearChildTID  uint64
}

const (
	signalsHdrSize = 40
	signalsRecSize = signalsHdrSize + 64*32
)

// Signals reads the TaskSignals of the given processes (level-0 pids)
// with a task iterator (signals.bpf.c); a process missing from the result
// was not found. Like Subreapers it needs the host pid namespace, kernel
// BTF, CAP_BPF and CAP_PERFMON. The processes must not run meanwhile (a
// frozen tree): the iterator reads without locks.
func Signals(pids []int) (map[int]*TaskSignals, error) {
	if err := hostPidNS(); err != nil {
		return nil, fmt.Errorf("read signal handlers: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("read signal handlers: kernel BTF missing (/sys/kernel/btf/vmlinux): %w", ebpf.ErrNotSupported)
	}
	var objs signalsObjects
	if err := loadSignalsObjects(&objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("read signal handlers: load the task iterator (needs CAP_BPF and CAP_PERFMON): %w", err)
		}
		return nil, fmt.Errorf("read signal handlers: load the task iterator: %w", err)
	}
	defer objs.Close()
	for _, pid := range pids {
		if err := objs.Wanted.Put(uint32(pid), uint8(1)); err != nil {
			return nil, fmt.Errorf("read signal handlers: %w", err)
		}
	}
	it, err := link.AttachIter(link.IterOptions{Program: objs.Signals})
	if err != nil {
		return nil, fmt.Errorf("read signal handlers: attach the task iterator: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("read signal handlers: open the task iterator: %w", err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read signal handlers: %w", err)
	}
	if len(b)%signalsRecSize != 0 {
		return nil, fmt.Errorf("read signal handlers: %d bytes, not a list of %d-byte records", len(b), signalsRecSize)
	}
	ne := binary.NativeEndian
	out := make(map[int]*TaskSignals, len(b)/signalsRecSize)
	for r := b; len(r) > 0; r = r[signalsRecSize:] {
		s := &TaskSignals{
			PdeathSignal: ne.Uint32(r[4:]), AltSP: ne.Uint64(r[8:]), AltSize: ne.Uint64(r[16:]),
			AltFlags: ne.Uint32(r[24:]), ClearChildTID: ne.Uint64(r[32:]),
		}
		for i := range s.Actions {
			a := r[signalsHdrSize+i*32:]
			s.Actions[i] = SigAction{ne.Uint64(a), ne.Uint64(a[8:]), ne.Uint64(a[16:]), ne.Uint64(a[24:])}
		}
		out[int(ne.Uint32(r))] = s
	}
	return out, nil
}
