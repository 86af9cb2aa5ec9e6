package dump

import (
	"fmt"
	"runtime"

	"github.com/nsinit/nsinit/pstree"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNS runs fn on an OS thread that has joined namespace nsfd of type
// nstype (CLONE_NEWUTS, CLONE_NEWNET) and puts the thread back afterwards.
// The work happens on a fresh goroutine with its thread locked: a thread
// whose namespace could not be restored stays locked when the goroutine
// ends, so the runtime retires it instead of handing it to other code.
// Only namespaces that a multithreaded process may join belong here (not
// user or pid namespaces).
func inNS(nsfd int, nstype int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := openThreadNS(nstype)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Setns(netns.NsHandle(nsfd), nstype); err != nil {
			runtime.UnlockOSThread() // setns failed: the thread did not move
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Setns(orig, nstype); err != nil {
			errc <- fmt.Errorf("setns back to our own namespace: %w", err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// openThreadNS opens the calling thread's namespace of type nstype.
func openThreadNS(nstype int) (netns.NsHandle, error) {
	name := map[int]string{unix.CLONE_NEWNET: "net", unix.CLONE_NEWUTS: "uts"}[nstype]
	if name == "" {
		return netns.None(), fmt.Errorf("namespace type %#x not supported here", nstype)
	}
	fd, err := unix.Open("/proc/thread-self/ns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("open our %s namespace: %w", name, err)
	}
	return netns.NsHandle(fd), nil
}

// readUTS fills in the hostname and domain name of uts namespace fd, as
// uname(2) reports them inside it. /proc/sys/kernel/hostname would show the
// reader's own uts namespace whatever procfs it is read through.
//
// The dumper's own namespace is read without setns: inside a container the
// dumper may have no capability over the user namespace owning it (a uts
// namespace it shares but could not join).
func readUTS(ns *pstree.Namespace, fd int) error {
	var u unix.Utsname
	var err error
	if ns.Ambient {
		err = unix.Uname(&u)
	} else {
		err = inNS(fd, unix.CLONE_NEWUTS, func() error { return unix.Uname(&u) })
	}
	if err != nil {
		return fmt.Errorf("uts namespace %d: %w", ns.ID, err)
	}
	ns.Hostname = unix.ByteSliceToString(u.Nodename[:])
	ns.Domainname = unix.ByteSliceToString(u.Domainname[:])
	return nil
}
