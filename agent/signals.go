package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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

// maxSignal is the highest Linux signal number (SIGRTMAX).
const maxSignal = 64

// notifySignals lists the signals the init relays to the command that
// os/signal can deliver (the others come through catchRawSignals).
func notifySignals(cfg Config) []syscall.Signal {
	raw := map[syscall.Signal]bool{}
	for _, s := range rawSignals {
		raw[s] = true
	}
	var out []syscall.Signal
	for s := syscall.Signal(1); s <= maxSignal; s++ {
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
	for s := 1; s <= maxSignal; s++ {
		if mask&(1<<(s-1)) != 0 {
			out = append(out, syscall.Signal(s))
		}
	}
	return out
}

// ParseSignal accepts a signal as a number ("15"), a name with or without
// the SIG prefix ("SIGTERM", "term") or a real-time offset ("RTMIN+3").
func ParseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > maxSignal {
			return 0, fmt.Errorf("signal %d out of range 1..%d", n, maxSignal)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	const rtmin = 34 // as the C library numbers it for programs
	switch {
	case name == "SIGRTMIN":
		return rtmin, nil
	case name == "SIGRTMAX":
		return maxSignal, nil
	case strings.HasPrefix(name, "SIGRTMIN+"):
		n, err := strconv.Atoi(name[len("SIGRTMIN+"):])
		if err == nil && rtmin+n <= maxSignal && n >= 0 {
			return syscall.Signal(rtmin + n), nil
		}
	case strings.HasPrefix(name, "SIGRTMAX-"):
		n, err := strconv.Atoi(name[len("SIGRTMAX-"):])
		if err == nil && maxSignal-n >= rtmin && n >= 0 {
			return syscall.Signal(maxSignal - n), nil
		}
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}
