package main

import (
	"errors"
	"os"

	"github.com/cilium/ebpf"
	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/agentconn"
	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/restorer"
	"github.com/nsinit/nsinit/state"
)

// Exit statuses of nsinit's commands (dump, restore, check, show, encode,
// trace), documented in README.md ("Exit status"). `restore` without -d
// exits with the restored root's status, which can be anything from 0 to
// 255; nsinit's own failures use 125 (as podman does for its own) and
// 200..207, above every status a death by signal gives (128+N, N <= 64)
// and, as with systemd's 200..243 for its own start-up failures, codes
// programs practically never exit with. The init (nsinit -- CMD) keeps
// tini's statuses: CMD's, 126/127 when CMD cannot start, 2 for a bad
// command line.
const (
	exitFailure     = 125 // nsinit failed; no more precise class below
	exitUsage       = 200 // bad command line: nothing was done
	exitBadImage    = 201 // the image is unreadable, malformed or of another version
	exitPIDTaken    = 202 // a pid the image needs is in use
	exitCapability  = 203 // a capability or permission is missing
	exitUnsupported = 204 // this tree or this machine is not supported (shape, architecture, no BTF)
	exitRaced       = 205 // dump: the tree kept changing through every attempt
	exitTimeout     = 206 // a freeze, a builder or an agent did not finish in time
	exitInterrupted = 207 // SIGINT, SIGTERM or SIGHUP rolled the restore back
)

// exitStatus is the status for err, by the first class it belongs to.
func exitStatus(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, restorer.ErrInterrupted):
		return exitInterrupted
	case errors.Is(err, restorer.ErrTimeout), errors.Is(err, dump.ErrTimeout), errors.Is(err, agentconn.ErrTimeout):
		return exitTimeout
	case errors.Is(err, restorer.ErrPIDTaken), errors.Is(err, state.ErrPIDTaken): // ErrHostRace too
		return exitPIDTaken
	case errors.Is(err, restorer.ErrCapability), errors.Is(err, os.ErrPermission):
		return exitCapability
	case errors.Is(err, restorer.ErrBadImage), errors.Is(err, pstree.ErrInvalid), errors.Is(err, imagefile.ErrFormat),
		errors.Is(err, imagefile.ErrVersion), errors.Is(err, imagefile.ErrNotRegular), errors.Is(err, state.ErrBadState):
		return exitBadImage
	case errors.Is(err, restorer.ErrUnsupported), errors.Is(err, dump.ErrUnrepresentable), errors.Is(err, ebpf.ErrNotSupported),
		errors.Is(err, state.ErrUnsupported):
		return exitUnsupported
	case errors.Is(err, dump.ErrRaced):
		return exitRaced
	}
	return exitFailure
}
