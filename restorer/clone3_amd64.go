package restorer

// clone3 is in trampoline_amd64.s.
//
//go:noescape
func clone3(args uintptr, size uintptr, arg uintptr) (r1 uintptr, errno uintptr)

// ArchSupported says whether restore runs on this architecture: the
// builders' clone trampoline is written for it.
func ArchSupported() error { return nil }
