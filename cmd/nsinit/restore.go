package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/restorer"
)

func init() {
	register("restore", "re-create a dumped tree with the same pids", runRestore)
}

func runRestore(args []string) int {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nsinit restore -D DIR [--dry-run] [--payload exec|stopped] [--placement set_tid|ns_last_pid] [-d] [--pidfile F] [--agent-timeout D]")
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
	agentTimeout := fs.Duration("agent-timeout", restorer.DefaultAgentTimeout, "abort when a restored agent does not answer within `duration`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
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
	res, err := restorer.Execute(plan, restorer.ExecOptions{AgentTimeout: *agentTimeout})
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return 1
	}
	defer res.RootFD.Close()
	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(res.Root)+"\n"), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "nsinit restore: pidfile: %v\n", err)
			return 1
		}
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
