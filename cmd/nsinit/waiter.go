package main

import "github.com/nsinit/nsinit/internal/waiter"

// Read by rt0 (rt0_amd64.s) before the Go runtime starts: a restored task
// that was waiting for its children runs internal/waiter's loop there, in
// assembly, with no runtime threads. These are initialised statically (the
// linker lays the constants out), so they hold their values at entry.
var (
	waiterFD     int64  = waiter.FD
	waiterMagic  uint64 = waiter.Magic
	waiterBuf    uint64 // pread scratch
	waiterStatus uint32 // wait4 status
)

// runWaiterIfMarked is the fallback for a binary linked without the rt0
// entry point: the same loop, in Go.
func runWaiterIfMarked() {
	if waiter.Marked() {
		waiter.Run()
	}
}
