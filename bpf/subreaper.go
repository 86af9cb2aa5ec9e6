package bpf

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
)

// Subreapers returns the level-0 pids of every process that is a child
// subreaper (PR_SET_CHILD_SUBREAPER): the kernel keeps the flag in
// signal->is_child_subreaper and shows it nowhere else - not in /proc, and
// PR_GET_CHILD_SUBREAPER answers only for the caller. A task iterator
// (subreaper.bpf.c) reads it for every process at once; a frozen tree
// cannot change it (only the process itself can, with prctl).
//
// Like the guard it needs the host pid namespace (the iterator reports the
// kernel's level-0 numbers), kernel BTF and CAP_BPF with CAP_PERFMON; errors
// wrap ebpf.ErrNotSupported or unix.EPERM then.
func Subreapers() (map[int]bool, error) {
	b, err := readTaskIter("read child subreapers", func() (*ebpf.Program, io.Closer, error) {
		var objs subreaperObjects
		if err := loadSubreaperObjects(&objs, nil); err != nil {
			return nil, nil, err
		}
		return objs.Subreapers, &objs, nil
	})
	if err != nil {
		return nil, err
	}
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("read child subreapers: %d bytes, not a list of u32", len(b))
	}
	out := make(map[int]bool, len(b)/4)
	for i := 0; i < len(b); i += 4 {
		out[int(binary.NativeEndian.Uint32(b[i:]))] = true
	}
	return out, nil
}
