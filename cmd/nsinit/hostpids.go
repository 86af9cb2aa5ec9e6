package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/check"
	"github.com/nsinit/nsinit/restorer"
)

// hostPIDsOption reads --host-pids and --pid-map into opt; the result is
// the usage error, "" when none. Kernel-chosen host pids make no sense
// into a new pid namespace (whose host pids are the kernel's anyway, and
// whose level 0 is exact), and a restore through an agent does not pass
// them on.
func (f *restoreFlags) hostPIDsOption(opt *restorer.Options) string {
	switch f.hostPIDs {
	case "", "exact":
	case "any":
		opt.HostPIDsAny = true
	default:
		return fmt.Sprintf("unknown --host-pids %q (exact or any)", f.hostPIDs)
	}
	switch {
	case opt.HostPIDsAny && f.newPidns:
		return "--host-pids any with --into-new-pidns: a new pid namespace already leaves the host pids to the kernel and keeps level 0 exact inside it"
	case opt.HostPIDsAny && f.via != "":
		return "--host-pids any with --agent: the agent restores at its own level 0, exactly"
	case f.pidMap != "" && !opt.HostPIDsAny:
		return "--pid-map needs --host-pids any (otherwise every pid is the image's)"
	case f.pidMap != "" && f.dry:
		return "--pid-map with --dry-run: nothing is restored"
	}
	return ""
}

// writePidMap writes, for --pid-map, each task's level-0 pid in the image
// and the one it got.
func writePidMap(path string, m map[int]int) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, check.FormatPIDMap(m), 0o644); err != nil {
		return fmt.Errorf("pid map: %w", err)
	}
	return nil
}
