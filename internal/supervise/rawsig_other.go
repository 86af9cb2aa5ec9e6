//go:build !amd64

package supervise

import (
	"os"
	"syscall"
)

// Without the amd64 assembly handler, signals 32, 33, 34 and SIGPROF are
// not forwarded (the Go runtime keeps them from os/signal).
var rawSignals []syscall.Signal

func catchRawSignals(out chan<- os.Signal) error { return nil }
