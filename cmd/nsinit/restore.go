package main

import (
	"context"
	"errors"
	"flag"
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
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nsinit restore -D DIR [--dry-run] [--payload exec|stopped] [--placement set_tid|ns_last_pid] [-d] [--pidfile F] [--agent-timeout D] [--agent SOCKET]")
		fs.PrintDefaults()
	}
	dir := fs.String("D", "", "image `directory`")
	dry := fs.Bool("dry-run", false, "print the plan and create nothing")
	payload := fs.String("payload", "exec", "what live tasks become: `exec` (their recorded program) or stopped")
	placement := fs.String("placement", "set_tid", "how innermost pids are placed: `set_tid` or ns_last_pid")
	var detach bool
	fs.BoolVar(&detach, "d", false, "detach: leave the tree running and print the root's pid")
	fs.BoolVar(&detach, "detach", false, "same as -d")
	pidfile := fs.String("pidfile", "", "write the root's pid to `file`")
	via := fs.String("agent", "", "restore through the nsinit agent listening on unix `socket` (nsinit --listen), into its pid namespace")
	agentTimeout := fs.Duration("agent-timeout", restorer.DefaultAgentTimeout, "abort when a restored agent does not answer within `duration`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	// What this process inherited (an agent's client passes the image
	// directory as fd 3) is not for the restored tasks, which share its fd
	// table until their exec.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	var opt restorer.Options
	switch *payload {
	case "exec":
	case "stopped":
		opt.Payload = restorer.PayloadStopped
	default:
		fmt.Fprintf(os.Stderr, "nsinit restore: unknown payload %q (exec or stopped)\n", *payload)
		return 2
	}
	switch *placement {
	case "set_tid":
	case "ns_last_pid":
		opt.Placement = restorer.PlaceLastPID
	default:
		fmt.Fprintf(os.Stderr, "nsinit restore: unknown placement %q (set_tid or ns_last_pid)\n", *placement)
		return 2
	}
	if *via != "" {
		return restoreViaAgent(*via, *dir, *payload, *placement, *pidfile)
	}
	// A task that was an nsinit agent becomes one again: this binary.
	if exe, err := os.Executable(); err == nil {
		opt.AgentExe = exe
	}
	// Decided before planning, never during execution.
	opt.Features = restorer.ProbeFeatures()
	tr, err := imagefile.Read(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
	}
	plan, err := restorer.NewPlan(tr, opt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: plan: %v\n", err)
		return 1
	}
	if *dry {
		fmt.Print(plan)
		return 0
	}
	// SIGINT (Ctrl-C), SIGTERM and SIGHUP roll the restore back like any
	// failure, and nsinit then dies of the signal's status.
	ctx, sig, stopSignals := interruptContext(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	res, err := restorer.ExecuteContext(ctx, plan, restorer.ExecOptions{AgentTimeout: *agentTimeout})
	stopSignals()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		if errors.Is(err, restorer.ErrInterrupted) {
			fmt.Fprintln(os.Stderr, "nsinit restore: everything it created is gone")
			return 128 + int(*sig)
		}
		return 1
	}
	defer res.RootFD.Close()
	if err := writePidfile(*pidfile, res.Root); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
	}
	if detach {
		fmt.Println(res.Root)
		return 0
	}
	// Like criu restore: stay the root's parent and exit with its status.
	_, st, err := sys.WaitPidfd(res.RootFD.Int(), 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: wait for root %d: %v\n", res.Root, err)
		return 1
	}
	if st.Signaled() {
		return 128 + int(st.Signal())
	}
	return st.ExitStatus()
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
func restoreViaAgent(socket, dir, payload, placement, pidfile string) int {
	abs, err := filepath.Abs(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
	}
	dirfd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: open %s: %v\n", abs, err)
		return 1
	}
	defer unix.Close(dirfd)
	c, err := agent.Dial(socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
	}
	defer c.Close()
	c.Timeout = agent.RestoreTimeout + time.Minute
	rep, err := c.CallWithFD(&agentpb.Request{Op: &agentpb.Request_Restore{Restore: &agentpb.Restore{
		ImageDir: abs, Payload: payload, Placement: placement,
	}}}, dirfd)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: through the agent at %s: %v\n", socket, err)
		return 1
	}
	root := int(rep.GetRestored().GetRootPid())
	if err := writePidfile(pidfile, root); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
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
