package main

import (
	"os/signal"
	"syscall"

	"github.com/nsinit/nsinit/agent"
)

// Filled in by rt0 (rt0_amd64.s) before the Go runtime starts, when the
// binary is linked with it as entry point. The runtime replaces most
// ignored dispositions with its own handler, so this is the only moment the
// original ones can be read.
var (
	origSigIgn    uint64
	origSigMask   uint64
	origSigKnown  uint64
	origSigAction [4]uint64 // struct kernel_sigaction scratch space for rt0
)

// originallyIgnored lists the signals nsinit was started with ignored.
// Without the rt0 entry point (a plain `go build`), only SIGHUP and SIGINT
// can still be told, because the runtime leaves those two alone.
func originallyIgnored() []syscall.Signal {
	if origSigKnown != 0 {
		return agent.SignalsFromMask(origSigIgn)
	}
	var out []syscall.Signal
	for _, s := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(s) {
			out = append(out, s)
		}
	}
	return out
}
