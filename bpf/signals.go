package bpf

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
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

// Signals reads the TaskSignals of every thread of the given processes
// (level-0 pids), by level-0 tid, with a task iterator (signals.bpf.c); a
// thread missing from the result was not found. The handlers are the
// process's (all its threads share them); the alternate stack,
// clear_child_tid and the parent-death signal each thread's. Like Subreapers it needs the host pid namespace, kernel
// BTF, CAP_BPF and CAP_PERFMON. The processes must not run meanwhile (a
// frozen tree): the iterator reads without locks.
func Signals(pids []int) (map[int]*TaskSignals, error) {
	b, err := readTaskIter("read signal handlers", func() (*ebpf.Program, io.Closer, error) {
		var objs signalsObjects
		if err := loadSignalsObjects(&objs, nil); err != nil {
			return nil, nil, err
		}
		for _, pid := range pids {
			if err := objs.Wanted.Put(uint32(pid), uint8(1)); err != nil {
				objs.Close()
				return nil, nil, err
			}
		}
		return objs.Signals, &objs, nil
	})
	if err != nil {
		return nil, err
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
		out[int(ne.Uint32(r[28:]))] = s // by tid
	}
	return out, nil
}
