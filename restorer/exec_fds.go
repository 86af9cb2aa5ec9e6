package restorer

import (
	"os"
	"strconv"

	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/internal/waiter"
)

// keepFDsBound is the header's keepFDs for a restore about to start: one
// above the highest fd open now and above the fds a payload is given
// (agentconn.ControlFD, waiter.FD), 0 (keep them all) when /proc/self/fd
// cannot be read.
//
// Every fd the restore opens from here on - a pidfd per proc, namespace
// files, the restorer's own pidfd - is close-on-exec, as is every fd the
// Go runtime opens, so an exec would close any of them that lies above
// the bound anyway: a builder that copies only the fds below it into its
// private table before its exec (builder_linux.go, privateFDs) gives its
// program the fds it had before, without the cost of copying and closing
// a pidfd for every proc of the restore.
func keepFDsBound() int64 {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	top := int64(max(agentconn.ControlFD, waiter.FD))
	for _, e := range ents {
		if fd, err := strconv.ParseInt(e.Name(), 10, 64); err == nil {
			top = max(top, fd)
		}
	}
	return top + 1
}
