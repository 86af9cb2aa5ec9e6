// Package nsid asks the kernel about namespace identity and hierarchy
// through the NS_GET_* ioctls on namespace fds (/proc/PID/ns/*): the parent
// of a pid or user namespace, the user namespace that owns a namespace, and
// the inode that names it while it lives.
package nsid

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNotVisible is wrapped when the kernel hides the answer (EPERM): the
// parent of the caller's own pid namespace or of the initial namespaces.
var ErrNotVisible = errors.New("namespace not visible")

// Parent returns a new fd of the parent of the pid or user namespace fd.
func Parent(fd int) (int, error) { return getFD(fd, unix.NS_GET_PARENT, "NS_GET_PARENT") }

// Owner returns a new fd of the user namespace that owns namespace fd.
func Owner(fd int) (int, error) { return getFD(fd, unix.NS_GET_USERNS, "NS_GET_USERNS") }

func getFD(fd int, req uint, name string) (int, error) {
	nfd, err := unix.IoctlRetInt(fd, req)
	if err == unix.EPERM {
		return -1, fmt.Errorf("%s: %w", name, ErrNotVisible)
	}
	if err != nil {
		return -1, fmt.Errorf("%s: %w", name, err)
	}
	unix.CloseOnExec(nfd)
	return nfd, nil
}

// OwnerUID returns the uid (in the caller's user namespace) of the creator
// of the user namespace fd.
func OwnerUID(fd int) (uint32, error) {
	uid, err := unix.IoctlGetUint32(fd, unix.NS_GET_OWNER_UID)
	if err != nil {
		return 0, fmt.Errorf("NS_GET_OWNER_UID: %w", err)
	}
	return uid, nil
}

// Inode returns the nsfs inode number of namespace fd.
func Inode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("fstat namespace: %w", err)
	}
	return st.Ino, nil
}

// nsGetNSType is NS_GET_NSTYPE, _IO(0xb7, 0x3) (not in x/sys/unix).
const nsGetNSType = 0xb703

// Type returns the kind of namespace fd as its CLONE_NEW* flag.
func Type(fd int) (int, error) {
	typ, err := unix.IoctlRetInt(fd, nsGetNSType)
	if err != nil {
		return 0, fmt.Errorf("NS_GET_NSTYPE: %w", err)
	}
	return typ, nil
}
