// Command miniinit is a minimal machine init for the vm-test harness's own
// tests: machine.Init, run the command, reap everything, power off
// with the command's status. It tests the machine layer and the harness
// apart from nsinit's real supervisor (cmd/nsinit), so a failure points at
// one of the two. Not a product: no signal forwarding, no options.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/nsinit/nsinit/internal/machine"
)

func main() {
	args, finish, err := machine.Init(os.Args[1:])
	if finish == nil {
		fmt.Fprintln(os.Stderr, "miniinit: not the machine's init", err)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "miniinit:", err)
		finish(2)
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "miniinit: no command")
		finish(2)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "miniinit:", err)
		finish(127)
	}
	status := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil { // ECHILD: everything reaped
			break
		}
		if pid == cmd.Process.Pid {
			status = ws.ExitStatus()
			if ws.Signaled() {
				status = 128 + int(ws.Signal())
			}
		}
	}
	finish(status)
}
