// Package nsthread runs a function on an OS thread that has joined another
// namespace, and brings the thread back: the one "setns on a locked OS
// thread" of nsinit (uts names for dump, the probes; the netlink client
// does its own through vishvananda/netlink's handles).
package nsthread

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// name names the namespace types a thread of a multithreaded process may
// join on its own ("" for the others): not user or pid (the whole
// process), not mnt (Go's threads share their fs_struct, CLONE_FS). A
// switch, not a map: no work at package load (the init path, issue #14).
func name(nstype int) string {
	switch nstype {
	case unix.CLONE_NEWNET:
		return "net"
	case unix.CLONE_NEWUTS:
		return "uts"
	case unix.CLONE_NEWIPC:
		return "ipc"
	}
	return ""
}

// In runs fn on an OS thread that has joined namespace fd of type nstype
// (fd: a /proc/PID/ns file or a pidfd) and puts the thread back afterwards.
// The work happens on a fresh goroutine with its thread locked: a thread
// whose namespace could not be restored stays locked when the goroutine
// ends, so the runtime retires it instead of handing it to other code.
func In(fd, nstype int, fn func() error) error {
	name := name(nstype)
	if name == "" {
		return fmt.Errorf("namespace type %#x cannot be joined by one thread", nstype)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open our %s namespace: %w", name, err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, nstype); err != nil {
			runtime.UnlockOSThread() // setns failed: the thread did not move
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, nstype); err != nil {
			errc <- fmt.Errorf("setns back to our own %s namespace: %w", name, err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
