package main

import "github.com/nsinit/nsinit/internal/machine"

// machineHook is called by runInit first thing when nsinit is PID 1.
//
// If nsinit is the init of the whole machine (a VM's /init, not a
// container's PID 1), it prepares the machine (mounts /proc, /sys, /dev and
// what the tests need), may supply the command line from /etc/nsinit/cmd
// when the kernel started nsinit without one, and returns a finish function
// that powers the machine off with the exit status instead of exiting (an
// init that exits panics the kernel). For the PID 1 of a container it
// returns args unchanged and a nil finish. See machine.Init for the
// rules; finish is non-nil whenever nsinit is the machine's init, even
// with an error.
func machineHook(args []string) (newArgs []string, finish func(status int), err error) {
	return machine.Init(args)
}
