package dump

import (
	"errors"
	"testing"

	"github.com/nsinit/nsinit/internal/procfs"
)

// TestFrozenStill: what the read of a frozen tree takes as movement. A task
// past the point of no return (PF_EXITING) may show R, S or D for a while
// and no freeze stops it; under ptrace every live task was seen stopping,
// so one not in 't' is running (mid-exec, mid-fork, exiting). Zombies are
// still whatever their flags; a live read (check) expects nothing.
func TestFrozenStill(t *testing.T) {
	cgroup := frozenAs{frozen: true}
	ptrace := frozenAs{frozen: true, ptrace: true}
	cases := []struct {
		name   string
		fz     frozenAs
		status byte // state in status
		stat   byte // state in stat, 0 if not read
		flags  uint64
		moved  bool
	}{
		{"cgroup sleeping", cgroup, 'S', 'S', 0x400000, false},
		{"cgroup exiting, still sleeping", cgroup, 'S', 'S', 0x400000 | procfs.PFExiting, true},
		{"cgroup exiting, running", cgroup, 'R', 'R', procfs.PFExiting, true},
		{"cgroup zombie", cgroup, 'Z', 'Z', 0x40800c, false},
		{"ptrace stopped", ptrace, 't', 't', 0x400000, false},
		{"ptrace thread stopped (stat not read)", ptrace, 't', 0, 0, false},
		{"ptrace running", ptrace, 'R', 'R', 0x400000, true},
		{"ptrace thread sleeping (stat not read)", ptrace, 'S', 0, 0, true},
		{"ptrace exiting", ptrace, 'D', 'D', procfs.PFExiting, true},
		{"ptrace zombie", ptrace, 'Z', 'Z', procfs.PFExiting, false},
		{"live read of an exiting task", frozenAs{}, 'R', 'R', procfs.PFExiting, false},
	}
	for _, c := range cases {
		err := c.fz.still(c.status, c.stat, c.flags)
		if (err != nil) != c.moved || (err != nil && !errors.Is(err, errMoved)) {
			t.Errorf("%s: %v, want moved=%v", c.name, err, c.moved)
		}
	}
}
