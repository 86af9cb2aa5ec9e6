// Package guest holds tests that run inside an nsinit test VM (vm-test):
// they check nsinit's behaviour as PID 1 of the whole machine, where the
// kernel, not a container runtime, is its parent. Outside a VM they skip.
// vm-test compiles them with `go test -c` and runs them under nsinit.
package guest

// XKFileMarker starts the console block that carries one image file out of
// the guest (TestCrossKernelDump): "NSINIT-XK-FILE NAME SHA256", base64
// lines, then XKEndMarker alone on a line.
const (
	XKFileMarker = "NSINIT-XK-FILE"
	XKEndMarker  = "NSINIT-XK-END"
)
