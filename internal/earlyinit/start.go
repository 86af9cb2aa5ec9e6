package earlyinit

import (
	"os/signal"
	"runtime"
	"syscall"

	"github.com/nsinit/nsinit/internal/supervise"
)

// noPreemptSignals is "1" when the Makefile linked the binary with the Go
// runtime's async preemption off (godebugDefault=asyncpreemptoff=1): then
// the runtime never sends itself SIGURG and a SIGURG nsinit receives can be
// forwarded. A plain `go build` leaves it empty and SIGURG is dropped.
var noPreemptSignals string

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

// Read by rt0 before the Go runtime starts: a restored task that was
// waiting for its children runs internal/waiter's loop there, in assembly,
// with no runtime threads. These are initialised statically (the linker
// lays the constants out), so they hold their values at entry. waiterFD
// and waiterMagic are internal/waiter's FD and Magic, which this package
// cannot import (golang.org/x/sys/unix); a test checks they agree.
var (
	waiterFD     int64  = 63
	waiterMagic  uint64 = 0x01_57_74_69_6e_69_73_6e // "nsinitW" 1, little-endian
	waiterBuf    uint64                             // pread scratch
	waiterStatus uint32                             // wait4 status
)

// ForwardSIGURG says whether a SIGURG nsinit receives may be forwarded: the
// binary was linked with async preemption off (supervise.Config).
func ForwardSIGURG() bool { return noPreemptSignals == "1" }

// StartSignals are the signals nsinit was started with ignored, and its
// signal mask then (known false: no rt0, the mask could not be read).
// Without the rt0 entry point (a plain `go build`), only SIGHUP and SIGINT
// can still be told ignored, because the runtime leaves those two alone.
func StartSignals() (ignored []syscall.Signal, mask uint64, known bool) {
	if origSigKnown != 0 {
		return supervise.SignalsFromMask(origSigIgn), origSigMask, true
	}
	for _, s := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(s) {
			ignored = append(ignored, s)
		}
	}
	return ignored, 0, false
}

// MissingLinkSettings lists what this binary lacks of the linker settings
// `make build` gives it (Makefile LDFLAGS) and the init needs, each with
// what it costs; empty for a Makefile build. A plain `go build` or `go
// install` lacks them all: the Go toolchain cannot set them from the
// source (asyncpreemptoff is not a //go:debug setting).
func MissingLinkSettings() []string {
	var miss []string
	if noPreemptSignals != "1" {
		miss = append(miss, "asynchronous preemption is on (-X runtime.godebugDefault=asyncpreemptoff=1 -X "+pkgPath+".noPreemptSignals=1): SIGURG is not forwarded to CMD")
	}
	if runtime.GOARCH == "amd64" && origSigKnown == 0 {
		miss = append(miss, "no assembly entry point (-E "+pkgPath+".rt0): CMD gets the default signal mask and dispositions, not the ones nsinit was started with")
	}
	return miss
}

const pkgPath = "github.com/nsinit/nsinit/internal/earlyinit"
