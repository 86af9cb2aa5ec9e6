package agent

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/nsinit/nsinit/internal/supervise"
	"golang.org/x/sys/unix"
)

const maxSignal = supervise.MaxSignal

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
