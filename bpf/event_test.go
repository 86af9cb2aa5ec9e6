package bpf

import (
	"strings"
	"testing"
)

// TestExitText: wait statuses read as strace prints them.
func TestExitText(t *testing.T) {
	for status, want := range map[int]string{
		0:         "exited 0",
		11 << 8:   "exited 11",
		255 << 8:  "exited 255",
		9:         "killed by SIGKILL",
		15:        "killed by SIGTERM",
		11 | 0x80: "killed by SIGSEGV (core dumped)",
		34:        "killed by SIGRTMIN",
		40:        "killed by SIGRTMIN+6",
		33:        "killed by signal 33",
		0x137f:    "status 0x137f", // stopped: not an exit
	} {
		if got := ExitText(status); got != want {
			t.Errorf("ExitText(%#x) = %q, want %q", status, got, want)
		}
	}
	st := 11 << 8
	e := Event{Kind: Exit, Pids: []int{1238, 2}, Tgid: 1238, ExitStatus: &st, Comm: "sh"}
	if got := e.String(); got != "exit 1238 [1238 2] exited 11 comm=sh" {
		t.Errorf("String() = %q", got)
	}
	if strings.Contains(e.String(), "0x") {
		t.Errorf("String() shows a raw status: %q", e.String())
	}
}
