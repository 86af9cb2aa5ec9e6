package supervise

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// The Go runtime keeps a few signals from os/signal: 32 and 34 (reserved for
// C libraries' threads; 34 is glibc's SIGRTMIN, which programs do use), 33
// (its own per-thread syscall signal) and SIGPROF (its profiler). Sent to
// nsinit, 32 and 34 would even kill it (default action, no handler). The
// init takes them over with a tiny assembly handler and forwards them like
// every other signal. nsinit never profiles itself nor changes its
// credentials across threads, so it loses nothing by it.
var rawSignals = []syscall.Signal{32, 33, 34, syscall.SIGPROF}

var (
	rawPending uint64 // bit N-1: signal N arrived, not yet forwarded
	rawPipe    int64  // write end of the wake-up pipe
	rawByte    byte
)

func rawSigHandler()
func rawSigReturn()
func rawHandlerAddrs() (handler, restorer uintptr)

// catchRawSignals installs rawSigHandler for rawSignals and delivers each
// arrival on out, as os/signal would.
func catchRawSignals(out chan<- os.Signal) error {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return fmt.Errorf("raw signal pipe: %w", err)
	}
	rawPipe = int64(p[1])
	r := os.NewFile(uintptr(p[0]), "raw-signals")
	handler, restorer := rawHandlerAddrs()
	act := kernelSigaction{
		handler:  handler,
		flags:    saOnStack | saRestart | saRestorer,
		restorer: restorer,
	}
	for _, s := range rawSignals {
		if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(s),
			uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0); e != 0 {
			return fmt.Errorf("take over signal %d: %w", s, e)
		}
	}
	go func() {
		var buf [64]byte
		for {
			if _, err := r.Read(buf[:]); err != nil {
				return
			}
			for _, s := range SignalsFromMask(atomic.SwapUint64(&rawPending, 0)) {
				out <- s
			}
		}
	}()
	return nil
}

// saRestorer is SA_RESTORER: the kernel returns from the handler through
// sa_restorer, which must call rt_sigreturn.
const (
	saRestorer = 0x04000000
	saOnStack  = 0x08000000
	saRestart  = 0x10000000
)
