package sys

import "golang.org/x/sys/unix"

// BlockAllSignals blocks every signal on the calling thread and returns the
// mask it had, for RestoreSignals. The thread must be locked to its
// goroutine. Wrapped around a raw clone, it keeps the child from running a
// Go signal handler before it has reset its dispositions.
func BlockAllSignals() (old unix.Sigset_t) {
	var all unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	// Cannot fail: the arguments are valid and SIG_SETMASK is known.
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old)
	return old
}

// RestoreSignals puts back the mask BlockAllSignals returned.
func RestoreSignals(old unix.Sigset_t) {
	_ = unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
}
