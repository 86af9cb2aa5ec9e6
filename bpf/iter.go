package bpf

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// readTaskIter runs a task iterator once and returns what it wrote. load
// loads its objects (and fills their maps) and returns the program and
// what to close. Every iterator here reports level-0 numbers and needs
// kernel BTF: errors wrap ebpf.ErrNotSupported or unix.EPERM when the
// machine or the caller cannot; what names the reading in them.
func readTaskIter(what string, load func() (*ebpf.Program, io.Closer, error)) ([]byte, error) {
	if err := hostPidNS(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("%s: kernel BTF missing (/sys/kernel/btf/vmlinux): %w", what, ebpf.ErrNotSupported)
	}
	prog, objs, err := load()
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("%s: load the task iterator (needs CAP_BPF and CAP_PERFMON): %w", what, err)
		}
		return nil, fmt.Errorf("%s: load the task iterator: %w", what, err)
	}
	defer objs.Close()
	it, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("%s: attach the task iterator: %w", what, err)
	}
	defer it.Close()
	rd, err := it.Open()
	if err != nil {
		return nil, fmt.Errorf("%s: open the task iterator: %w", what, err)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}
