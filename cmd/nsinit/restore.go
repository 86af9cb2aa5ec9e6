package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/proto/agentpb"
	"github.com/nsinit/nsinit/restorer"
	"golang.org/x/sys/unix"
)

func init() {
	register("restore", "re-create a dumped tree with the same pids", runRestore)
}

func runRestore(args []string) int {
	var (
		dir, pidfile, via, logFile string
		payload                    = "exec"
		placement                  = "set_tid"
		dry, detach, inheritStdio  bool
		newPidns, quietRoot        bool
		shellJob                   bool
		newRoot, mounts            string
		agentTimeout               = restorer.DefaultAgentTimeout
		verbose                    int
	)
	fs := newFlags("nsinit restore",
		"nsinit restore -D DIR [-d [--inherit-stdio]] [-j] [--pidfile FILE] [--payload exec|stopped] [--placement set_tid|ns_last_pid]\n"+
			"                      [--dry-run] [--agent-timeout D] [--agent SOCKET] [-o FILE] [-v]",
		"Re-creates the tree of DIR with the same pids at every level. Without -d, nsinit stays\n"+
			"the root's parent and exits with its status, like criu restore.")
	fs.String(&dir, "D,images-dir", "DIR", "image directory")
	fs.Bool(&detach, "d,detach,restore-detached", "leave the tree running and print the root's pid; its programs get /dev/null as stdin, stdout and stderr")
	fs.Bool(&inheritStdio, "inherit-stdio", "with -d: the restored programs keep nsinit's stdin, stdout and stderr instead")
	fs.String(&pidfile, "pidfile", "FILE", "write the root's pid to FILE")
	fs.String(&payload, "payload", "exec|stopped", "what live tasks become: their recorded program (exec) or stopped tasks")
	fs.String(&placement, "placement", "set_tid|ns_last_pid", "how innermost pids are placed")
	fs.Bool(&dry, "dry-run", "print the plan and create nothing")
	fs.Bool(&newPidns, "into-new-pidns", "restore into a new pid namespace whose PID 1 is nsinit: the image's level 0 becomes that namespace, so no host pid need be free and copies can run side by side")
	fs.String(&newRoot, "r,root", "DIR", "run the tasks whose root directory was a container's filesystem in DIR (chroot before their exec)")
	fs.String(&mounts, "mounts", "host", "with host: run such tasks in this machine's filesystem instead")
	fs.Bool(&shellJob, "j,shell-job", "the root's session and group, when led from outside the tree, become nsinit's own (without it such an image restores only from that session and group)")
	fs.Bool(&quietRoot, "no-print-root", "with -d: do not print the root's pid (--into-new-pidns uses it inside)")
	fs.Duration(&agentTimeout, "agent-timeout", "D", "abort when a restored agent does not answer within D")
	fs.String(&via, "agent", "SOCKET", "restore through the nsinit agent listening on SOCKET (nsinit --listen), into its pid namespace")
	fs.String(&logFile, "o,log-file", "FILE", "write the log to FILE (relative: in DIR) and copy errors there")
	fs.Count(&verbose, "v,verbosity", "log what the restore does")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	if dir == "" {
		return fs.Fail("-D/--images-dir DIR is required")
	}
	if len(fs.Args()) != 0 {
		return fs.Fail("unexpected argument %q", fs.Args()[0])
	}
	var opt restorer.Options
	switch mounts {
	case "":
	case "host":
		opt.HostMounts = true
	default:
		return fs.Fail("unknown --mounts %q (host)", mounts)
	}
	if newRoot != "" {
		if opt.HostMounts {
			return fs.Fail("--root and --mounts host exclude each other")
		}
		abs, err := filepath.Abs(newRoot)
		if err != nil {
			return fs.Fail("--root %s: %v", newRoot, err)
		}
		if st, err := os.Stat(abs); err != nil || !st.IsDir() {
			return fs.Fail("--root %s: not a directory", newRoot)
		}
		opt.Root = abs
	}
	switch payload {
	case "exec":
	case "stopped":
		opt.Payload = restorer.PayloadStopped
	default:
		return fs.Fail("unknown payload %q (exec or stopped)", payload)
	}
	switch placement {
	case "set_tid":
	case "ns_last_pid":
		opt.Placement = restorer.PlaceLastPID
	default:
		return fs.Fail("unknown placement %q (set_tid or ns_last_pid)", placement)
	}
	// What this process inherited (an agent's client passes the image
	// directory as fd 3) is not for the restored tasks, which share its fd
	// table until their exec.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	d, err := openDiag("nsinit restore", verbose, logFile, dir, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return exitStatus(err)
	}
	defer d.close()
	if via != "" {
		return restoreViaAgent(d, via, dir, payload, placement, pidfile)
	}
	if newPidns {
		if dry {
			return fs.Fail("--dry-run with --into-new-pidns: the plan is the same without it")
		}
		// Inside, the restorer always detaches (the namespace's init adopts
		// the root); the tree keeps the caller's stdio unless -d says not.
		// The new namespace holds no session or group from outside the
		// tree: the tree takes PID 1's, as with --shell-job.
		pass := []string{"--no-print-root", "--shell-job", "--payload", payload, "--placement", placement, "--agent-timeout", agentTimeout.String()}
		if !detach || inheritStdio {
			pass = append(pass, "--inherit-stdio")
		}
		if opt.Root != "" {
			pass = append(pass, "--root", opt.Root)
		}
		if opt.HostMounts {
			pass = append(pass, "--mounts", "host")
		}
		return restoreIntoNewPidns(dir, pass, detach, pidfile)
	}
	// A task that was an nsinit agent becomes one again: this binary.
	if exe, err := os.Executable(); err == nil {
		opt.AgentExe = exe
	}
	// Decided before planning, never during execution.
	opt.Features = restorer.ProbeFeatures()
	opt.ShellJob = shellJob
	tr, err := imagefile.Read(dir)
	if err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	plan, err := restorer.NewPlan(tr, opt)
	if err != nil {
		d.errorf("plan: %v", err)
		return exitStatus(err)
	}
	d.logf(1, "image %s: %d tasks, plan of %d steps", dir, len(tr.Tasks), len(plan.Steps))
	if dry {
		fmt.Print(plan)
		return 0
	}
	// A detached tree must not hold its caller's pipe or terminal: nsinit
	// returns once it is up, and `pid=$(nsinit restore -d)` sees end of file.
	var execOpt = restorer.ExecOptions{AgentTimeout: agentTimeout}
	if detach && !inheritStdio {
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			d.errorf("%v", err)
			return exitStatus(err)
		}
		defer null.Close()
		execOpt.Stdio = [3]*os.File{null, null, null}
	}
	// SIGINT (Ctrl-C), SIGTERM and SIGHUP roll the restore back like any
	// failure, and nsinit then dies of the signal's status.
	start := time.Now()
	ctx, sig, stopSignals := interruptContext(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	res, err := restorer.ExecuteContext(ctx, plan, execOpt)
	stopSignals()
	if err != nil {
		d.errorf("%v", err)
		if errors.Is(err, restorer.ErrInterrupted) {
			d.errorf("%v: everything it created is gone", *sig)
		}
		return exitStatus(err)
	}
	defer res.RootFD.Close()
	d.logf(1, "restored %d tasks in %v, root pid %d", len(tr.Tasks), time.Since(start).Round(time.Millisecond), res.Root)
	if err := writePidfile(pidfile, res.Root); err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if detach {
		if !quietRoot {
			fmt.Println(res.Root)
		}
		return 0
	}
	// Like criu restore: stay the root's parent and exit with its status.
	_, st, err := sys.WaitPidfd(res.RootFD.Int(), 0)
	if err != nil {
		d.errorf("wait for root %d: %v", res.Root, err)
		return exitFailure
	}
	return agent.ShellStatus(syscall.WaitStatus(st))
}

// interruptContext is a context cancelled by the first of sigs to arrive
// (its cause names it, *sig holds it); stop puts the signals' default
// action back.
func interruptContext(sigs ...os.Signal) (ctx context.Context, sig *syscall.Signal, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	done := make(chan struct{})
	sig = new(syscall.Signal)
	go func() {
		select {
		case s := <-ch:
			*sig = s.(syscall.Signal)
			cancel(fmt.Errorf("%v", s))
		case <-done:
		}
	}()
	return ctx, sig, func() {
		signal.Stop(ch)
		close(done)
	}
}

// restoreViaAgent asks a running agent to restore the image into its own
// pid namespace (level 0 of the image): for a caller with no capability
// over that namespace, or no process inside it. The image directory goes
// as a descriptor opened here, with this process's rights. The tree is
// detached; the pid printed is the root's as the agent's namespace numbers
// it.
func restoreViaAgent(d *diag, socket, dir, payload, placement, pidfile string) int {
	abs, err := filepath.Abs(dir)
	if err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	dirfd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		d.errorf("open %s: %v", abs, err)
		return exitStatus(err)
	}
	defer unix.Close(dirfd)
	c, err := agent.Dial(socket)
	if err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	defer c.Close()
	c.Timeout = agent.RestoreTimeout + time.Minute
	rep, err := c.CallWithFD(&agentpb.Request{Op: &agentpb.Request_Restore{Restore: &agentpb.Restore{
		ImageDir: abs, Payload: payload, Placement: placement,
	}}}, dirfd)
	if err != nil {
		d.errorf("through the agent at %s: %v", socket, err)
		return exitStatus(err)
	}
	root := int(rep.GetRestored().GetRootPid())
	if err := writePidfile(pidfile, root); err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	fmt.Println(root)
	return 0
}

// writePidfile writes pid to path, unless path is empty.
func writePidfile(path string, pid int) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	return nil
}
