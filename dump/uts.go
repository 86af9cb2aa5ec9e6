package dump

import (
	"fmt"

	"github.com/nsinit/nsinit/internal/nsthread"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

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
		err = nsthread.In(fd, unix.CLONE_NEWUTS, func() error { return unix.Uname(&u) })
	}
	if err != nil {
		return fmt.Errorf("uts namespace %d: %w", ns.ID, err)
	}
	ns.Hostname = unix.ByteSliceToString(u.Nodename[:])
	ns.Domainname = unix.ByteSliceToString(u.Domainname[:])
	return nil
}
