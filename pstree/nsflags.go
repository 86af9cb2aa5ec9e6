package pstree

import "golang.org/x/sys/unix"

// cloneFlags is the CLONE_NEW* flag of each kind (unshare, setns, clone).
// pid_for_children has none of its own: it is the pid namespace's.
var cloneFlags = [numNSKinds]uint64{
	PidNS:    unix.CLONE_NEWPID,
	UserNS:   unix.CLONE_NEWUSER,
	NetNS:    unix.CLONE_NEWNET,
	UTSNS:    unix.CLONE_NEWUTS,
	IPCNS:    unix.CLONE_NEWIPC,
	MntNS:    unix.CLONE_NEWNS,
	CgroupNS: unix.CLONE_NEWCGROUP,
	TimeNS:   unix.CLONE_NEWTIME,
}

// CloneFlag is the kind's CLONE_NEW* flag, 0 for pid_for_children.
func (k NSKind) CloneFlag() uint64 {
	if k < 0 || k >= numNSKinds {
		return 0
	}
	return cloneFlags[k]
}

// KindOfCloneFlag is the kind whose CLONE_NEW* flag is flag (the pid
// namespace's for CLONE_NEWPID, never pid_for_children).
func KindOfCloneFlag(flag uint64) (NSKind, bool) {
	for k, f := range cloneFlags {
		if f == flag && flag != 0 {
			return NSKind(k), true
		}
	}
	return 0, false
}

// CloneFlags is the union of the flags of the kinds whose entry in s is set
// (non-zero).
func (s NSSet) CloneFlags() uint64 {
	var f uint64
	for k, id := range s {
		if id != 0 {
			f |= NSKind(k).CloneFlag()
		}
	}
	return f
}
