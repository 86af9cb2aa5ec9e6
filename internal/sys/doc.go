// Package sys is the only package of nsinit that wraps the raw syscalls the
// restorer needs and Go does not offer: clone3 with set_tid (x/sys has no
// clone_args), pidfd fdinfo parsing, pidfd waits and signals.
//
// Pid vectors enter this package OUTERMOST first (as NSpid and pstree do);
// SetTID is the one place that reverses them into the kernel's innermost-first
// set_tid order. File descriptors are returned as *FD, which counts the open
// ones so tests can fail on a leak (OpenFDs).
package sys
