package main

import (
	"github.com/nsinit/nsinit/bpf"
	"github.com/nsinit/nsinit/dump"
)

// The dump's consistency guard is the eBPF watcher: it counts fork, exit
// and exec of the tree while the dump reads it. Loading fails with an error
// wrapping ebpf.ErrNotSupported (no BTF) or EPERM (no CAP_BPF/CAP_PERFMON),
// which dump reports (or accepts with --unchecked).
func init() {
	readSubreapers = bpf.Subreapers
	readSignals = bpf.Signals
	newDumpGuard = func() (dump.Guard, error) {
		g, err := bpf.NewGuard()
		if err != nil {
			return nil, err // not a typed nil inside the interface
		}
		return g, nil
	}
}
