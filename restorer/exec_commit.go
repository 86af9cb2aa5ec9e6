package restorer

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/nsinit/nsinit/internal/sys"
	"golang.org/x/sys/unix"
)

// commit hands the tree over: it closes every pidfd but the root's.
func (t *tx) commit() (*Restored, error) {
	res := &Restored{Root: t.hostPID(0), HostPIDs: t.hostPIDs()}
	for i := range t.p.Procs {
		fd := int(t.proc(i).pidfd)
		if fd < 0 {
			continue
		}
		if i == 0 {
			res.rootFD = sys.NewFD(fd)
		} else {
			_ = unix.Close(fd)
		}
	}
	t.committed = true
	atomic.StoreUint32(&t.hdr().committed, 1)
	t.closeSelfFD()
	closeAgentLinks(t.links)
	closeMark(t.mark)
	t.restoreSubreaper()
	// Parked processes (stopped payload) still run builder code in the
	// block; it must stay mapped for them.
	if t.p.Options.Payload == PayloadExec {
		t.b.unmap()
	}
	return res, nil
}

func (t *tx) restoreSubreaper() {
	if t.resetSubreaper {
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		t.resetSubreaper = false
	}
}

// rollbackUnlessCommitted kills every created process (SIGKILL through its
// pidfd, last created first) and reaps each one: directly when it is our
// child or becomes one (we are a subreaper), else by waiting until its
// parent or its dying namespace init reaped it. Then the block goes.
func (t *tx) rollbackUnlessCommitted() {
	if t.committed || t.b == nil {
		return
	}
	closeAgentLinks(t.links)
	closeMark(t.mark)
	var fds []int
	for i := len(t.p.Procs) - 1; i >= 0; i-- {
		if fd := int(atomic.LoadInt32(&t.proc(i).pidfd)); fd >= 0 {
			fds = append(fds, fd)
			_ = sys.PidfdKill(fd, unix.SIGKILL)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	pending := fds
	for len(pending) > 0 && time.Now().Before(deadline) {
		var next []int
		for _, fd := range pending {
			// __WALL: a CLONE_PARENT clone has no exit signal.
			reaped, _, err := sys.WaitPidfd(fd, unix.WNOHANG|unix.WALL)
			if reaped {
				continue
			}
			if err != nil {
				if _, err := sys.FdinfoNSpid(fd); errors.Is(err, sys.ErrReaped) {
					continue
				}
			}
			next = append(next, fd)
		}
		pending = next
		if len(pending) > 0 {
			time.Sleep(2 * time.Millisecond)
		}
	}
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
	t.restoreSubreaper()
	if len(pending) == 0 {
		t.closeSelfFD()
		t.b.unmap()
	}
}

// closeSelfFD closes the restorer's own pidfd once no builder waits on it.
func (t *tx) closeSelfFD() {
	if t.selfFD >= 0 {
		unix.Close(t.selfFD)
		t.selfFD = -1
	}
}
