package sys

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// openFDs counts the FDs this package returned and that are not closed yet.
var openFDs atomic.Int64

// OpenFDs is the number of *FD values still open; tests compare it before
// and after to catch leaks.
func OpenFDs() int64 { return openFDs.Load() }

// FD owns one file descriptor.
type FD struct {
	raw int
}

// NewFD takes ownership of raw.
func NewFD(raw int) *FD {
	openFDs.Add(1)
	return &FD{raw: raw}
}

// Int is the descriptor number; -1 after Close.
func (fd *FD) Int() int {
	if fd == nil {
		return -1
	}
	return fd.raw
}

// Close closes the descriptor; closing twice is a no-op.
func (fd *FD) Close() error {
	if fd == nil || fd.raw < 0 {
		return nil
	}
	raw := fd.raw
	fd.raw = -1
	openFDs.Add(-1)
	if err := unix.Close(raw); err != nil {
		return fmt.Errorf("close fd %d: %w", raw, err)
	}
	return nil
}
