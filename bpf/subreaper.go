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
	if err := hostPidNS(); err != nil {
		return nil, fmt.Errorf("read child subreapers: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("read child subreapers: kernel BTF missing (/sys/kernel/btf/vmlinux): %w", ebpf.ErrNotSupported)
	}
	var objs subreaperObjects
	if err := loadSubreaperObjects(&objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("read child subreapers: load the task iterator (needs CAP_BPF and CAP_PERFMON): %w", err)
		}
		return nil, fmt.Errorf("read child subreapers: load the task iterator: %w", err)
	}
	defer objs.Close()
	it, err := link.AttachIter(link.IterOptions{Program: objs.Subreapers})
	if err != nil {
		return nil, fmt.Errorf("read child subreapers: attach the task iterator: %w", err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("read child subreapers: open the task iterator: %w", err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read child subreapers: %w", err)
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
