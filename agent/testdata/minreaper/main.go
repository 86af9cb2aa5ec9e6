// Command minreaper is the smallest Go init worth the name, the yardstick
// of BenchmarkInitMemory: it starts its command (os/exec), forwards every
// signal it can catch (signal.Notify) and reaps every child (a wait4
// loop), exiting with the command's status. Nothing else.
package main

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs)
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		os.Exit(127)
	}
	child := cmd.Process.Pid
	for s := range sigs {
		if s != syscall.SIGCHLD {
			syscall.Kill(child, s.(syscall.Signal))
			continue
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			if pid == child {
				if ws.Signaled() {
					os.Exit(128 + int(ws.Signal()))
				}
				os.Exit(ws.ExitStatus())
			}
		}
	}
}
