package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LastPIDPath is the pid cursor of the caller's active pid namespace,
// whatever procfs it is reached through (docs/kernel.md F1.1): the next
// fork there takes the first free pid above it.
const LastPIDPath = "/proc/sys/kernel/ns_last_pid"

// PidMax is kernel.pid_max as the caller's pid namespace sees it (per
// namespace since 6.14, docs/kernel.md F1.5).
func PidMax() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ReadLastPID reads the cursor of the caller's active pid namespace.
func ReadLastPID() (int, error) {
	b, err := os.ReadFile(LastPIDPath)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("ns_last_pid %q: %w", b, err)
	}
	return v, nil
}

// WriteLastPID sets the cursor of the caller's active pid namespace; it
// needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the user namespace owning
// it (docs/kernel.md F1.2).
func WriteLastPID(v int) error {
	if err := os.WriteFile(LastPIDPath, []byte(strconv.Itoa(v)), 0); err != nil {
		return fmt.Errorf("write ns_last_pid %d: %w", v, err)
	}
	return nil
}
