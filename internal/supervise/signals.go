package supervise

import (
	"os"
	"syscall"
)

// Signals the init never forwards:
//   - SIGKILL and SIGSTOP cannot be caught.
//   - SIGCHLD is the init's own business (reaping).
//
// Everything else is forwarded as it arrives, including:
//   - the signals the Go runtime keeps from os/signal (32, 33, 34 = glibc's
//     SIGRTMIN, SIGPROF): taken over by a raw handler, see rawsig_amd64.go;
//   - SIGTSTP, SIGTTIN and SIGTTOU: the command decides whether it stops;
//     nsinit itself never stops, so the supervisor keeps reaping;
//   - SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT and SIGSYS sent with
//     kill(2): they are requests like any other. A real fault inside nsinit
//     is not forwarded; it crashes nsinit (a bug, reported by the runtime).
var notForwarded = map[syscall.Signal]bool{
	syscall.SIGKILL: true,
	syscall.SIGSTOP: true,
	syscall.SIGCHLD: true,
}

// MaxSignal is the highest Linux signal number (SIGRTMAX).
const MaxSignal = 64

// notifySignals lists the signals the init relays to the command that
// os/signal can deliver (the others come through catchRawSignals).
func notifySignals(cfg Config) []syscall.Signal {
	raw := map[syscall.Signal]bool{}
	for _, s := range rawSignals {
		raw[s] = true
	}
	var out []syscall.Signal
	for s := syscall.Signal(1); s <= MaxSignal; s++ {
		if notForwarded[s] || raw[s] || (s == syscall.SIGURG && !cfg.ForwardSIGURG) {
			continue
		}
		out = append(out, s)
	}
	return out
}

func signalsOf(ss []syscall.Signal) []os.Signal {
	out := make([]os.Signal, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// SignalsFromMask turns a bit mask (bit N-1 set for signal N, the layout of
// /proc/PID/status SigIgn) into a list of signals.
func SignalsFromMask(mask uint64) []syscall.Signal {
	var out []syscall.Signal
	for s := 1; s <= MaxSignal; s++ {
		if mask&(1<<(s-1)) != 0 {
			out = append(out, syscall.Signal(s))
		}
	}
	return out
}
