package sys

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrReaped is returned by FdinfoNSpid for a process that no longer exists.
var ErrReaped = errors.New("process reaped")

// PidfdOpen opens a pidfd for pid (in the caller's pid namespace).
func PidfdOpen(pid int) (*FD, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return NewFD(fd), nil
}

// FdinfoNSpid reads NSpid of the process behind pidfd from
// /proc/self/fdinfo/<fd>: the pid at every level seen from the procfs
// mounted at /proc, outermost first. It is race free: the pidfd pins the
// process identity (F9.1). A reaped process gives ErrReaped.
func FdinfoNSpid(pidfd int) ([]int, error) {
	return fdinfoNSpid("/proc", pidfd)
}

func fdinfoNSpid(procRoot string, pidfd int) ([]int, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/self/fdinfo/%d", procRoot, pidfd))
	if err != nil {
		return nil, fmt.Errorf("read fdinfo of pidfd %d: %w", pidfd, err)
	}
	return ParseFdinfoNSpid(b)
}

// ParseFdinfoNSpid extracts the NSpid line of a pidfd's fdinfo text.
func ParseFdinfoNSpid(b []byte) ([]int, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != "NSpid" {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return nil, fmt.Errorf("empty NSpid in fdinfo")
		}
		pids := make([]int, len(f))
		for i, s := range f {
			n, err := strconv.Atoi(s)
			if err != nil {
				return nil, fmt.Errorf("parse NSpid %q: %w", v, err)
			}
			pids[i] = n
		}
		if pids[0] == -1 {
			return nil, ErrReaped
		}
		return pids, nil
	}
	return nil, fmt.Errorf("no NSpid line in pidfd fdinfo")
}

// PidfdKill sends sig to the process behind pidfd.
func PidfdKill(pidfd int, sig unix.Signal) error {
	if err := unix.PidfdSendSignal(pidfd, sig, nil, 0); err != nil {
		return fmt.Errorf("pidfd_send_signal %v: %w", sig, err)
	}
	return nil
}

// WaitPidfd reaps the process behind pidfd if it is the caller's child and
// has exited; options add to WEXITED (e.g. WNOHANG). It returns reaped=false
// with WNOHANG when it has not exited yet, and ECHILD when it is not (or no
// longer) the caller's child.
func WaitPidfd(pidfd int, options int) (reaped bool, status unix.WaitStatus, err error) {
	var info unix.Siginfo
	err = unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|options, nil)
	if err != nil {
		return false, 0, err
	}
	si := (*siginfoChld)(unsafeSiginfo(&info))
	if si.Pid == 0 {
		return false, 0, nil
	}
	switch si.Code {
	case cldExited:
		status = unix.WaitStatus(si.Status << 8)
	case cldKilled:
		status = unix.WaitStatus(si.Status)
	case cldDumped:
		status = unix.WaitStatus(si.Status | 0x80)
	}
	return true, status, nil
}
