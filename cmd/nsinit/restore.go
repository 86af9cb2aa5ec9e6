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
	"github.com/nsinit/nsinit/internal/cliflag"
	"github.com/nsinit/nsinit/internal/supervise"
	"github.com/nsinit/nsinit/internal/sys"
	"github.com/nsinit/nsinit/proto/agentpb"
	"github.com/nsinit/nsinit/pstree"
	"github.com/nsinit/nsinit/restorer"
	"github.com/nsinit/nsinit/state"
	"golang.org/x/sys/unix"
)

func init() {
	register("restore", "re-create a dumped tree with the same pids", runRestore)
}

// restoreFlags is what `nsinit restore` was asked.
type restoreFlags struct {
	dir, pidfile, via         string
	payload, placement        string
	dry, detach, inheritStdio bool
	newPidns, quietRoot       bool
	shellJob, skipMissing     bool
	newRoot, mounts           string
	hostPIDs, pidMap          string
	agentTimeout              time.Duration
	log                       diagOptions
}

func (f *restoreFlags) flagSet() *cliflag.Set {
	// payload "": exec, or the recorded state (an image dumped with --state).
	f.payload, f.placement, f.agentTimeout = "", "set_tid", restorer.DefaultAgentTimeout
	fs := newFlags("nsinit restore",
		"nsinit restore -D DIR [-d [--inherit-stdio]] [-j] [--pidfile FILE] [--payload exec|stopped] [--placement set_tid|ns_last_pid]\n"+
			"                      [--dry-run] [--agent-timeout D] [--agent SOCKET] [-o FILE] [--log-format text|json] [-v] [--progress]",
		"Re-creates the tree of DIR with the same pids at every level. Without -d, nsinit stays\n"+
			"the root's parent and exits with its status, like criu restore.")
	fs.String(&f.dir, "D,images-dir", "DIR", "image directory")
	fs.Bool(&f.detach, "d,detach,restore-detached", "leave the tree running and print the root's pid; its programs get /dev/null as stdin, stdout and stderr")
	fs.Bool(&f.inheritStdio, "inherit-stdio", "with -d: the restored programs keep nsinit's stdin, stdout and stderr instead")
	fs.String(&f.pidfile, "pidfile", "FILE", "write the root's pid to FILE")
	fs.String(&f.payload, "payload", "exec|stopped", "what live tasks become: their recorded program (exec, the default) or stopped tasks; an image dumped with --state continues its programs unless this is given")
	fs.String(&f.placement, "placement", "set_tid|ns_last_pid", "how innermost pids are placed")
	fs.Bool(&f.dry, "dry-run", "print the plan and create nothing")
	fs.Bool(&f.newPidns, "into-new-pidns", "restore into a new pid namespace whose PID 1 is nsinit: the image's level 0 becomes that namespace, so no host pid need be free and copies can run side by side")
	fs.String(&f.newRoot, "r,root", "DIR", "run the tasks whose root directory was a container's filesystem in DIR (chroot before their exec)")
	fs.String(&f.mounts, "mounts", "host", "with host: run such tasks in this machine's filesystem instead")
	fs.Bool(&f.skipMissing, "skip-missing-binds", "with --root: leave out, with a warning, a container's bind mount from a host path this machine lacks (without it such an image is refused)")
	fs.Bool(&f.shellJob, "j,shell-job", "the root's session and group, when led from outside the tree, become nsinit's own (without it such an image restores only from that session and group)")
	fs.String(&f.hostPIDs, "host-pids", "exact|any", "any: the kernel chooses every level-0 (host) pid, every deeper level stays exact (no host pid need be free)")
	fs.String(&f.pidMap, "pid-map", "FILE", "with --host-pids any: write each task's level-0 pid in the image and the one it got, a pair a line (for check --pid-map)")
	fs.Bool(&f.quietRoot, "no-print-root", "with -d: do not print the root's pid (--into-new-pidns uses it inside)")
	fs.Duration(&f.agentTimeout, "agent-timeout", "D", "abort when a restored agent does not answer within D")
	fs.String(&f.via, "agent", "SOCKET", "restore through the nsinit agent listening on SOCKET (nsinit --listen), into its pid namespace")
	f.log.addFlags(fs, "log what the restore does")
	return fs
}

// options checks the flags and turns them into the restorer's options
// (Features and AgentExe are filled in later, for a restore here); why is
// the usage error.
func (f *restoreFlags) options(args []string) (opt restorer.Options, why string) {
	switch {
	case f.dir == "":
		return opt, "-D/--images-dir DIR is required"
	case len(args) != 0:
		return opt, fmt.Sprintf("unexpected argument %q", args[0])
	case f.newPidns && f.dry:
		return opt, "--dry-run with --into-new-pidns: the plan is the same without it"
	}
	if why := f.log.bad(); why != "" {
		return opt, why
	}
	switch f.mounts {
	case "":
	case "host":
		opt.HostMounts = true
	default:
		return opt, fmt.Sprintf("unknown --mounts %q (host)", f.mounts)
	}
	if f.newRoot != "" {
		if opt.HostMounts {
			return opt, "--root and --mounts host exclude each other"
		}
		abs, err := filepath.Abs(f.newRoot)
		if err != nil {
			return opt, fmt.Sprintf("--root %s: %v", f.newRoot, err)
		}
		if st, err := os.Stat(abs); err != nil || !st.IsDir() {
			return opt, fmt.Sprintf("--root %s: not a directory", f.newRoot)
		}
		opt.Root = abs
	}
	if f.skipMissing {
		if opt.Root == "" {
			return opt, "--skip-missing-binds needs --root"
		}
		opt.SkipMissingBinds = true
	}
	switch f.payload {
	case "", "exec":
	case "stopped":
		opt.Payload = restorer.PayloadStopped
	default:
		return opt, fmt.Sprintf("unknown payload %q (exec or stopped)", f.payload)
	}
	switch f.placement {
	case "set_tid":
	case "ns_last_pid":
		opt.Placement = restorer.PlaceLastPID
	default:
		return opt, fmt.Sprintf("unknown placement %q (set_tid or ns_last_pid)", f.placement)
	}
	opt.ShellJob = f.shellJob
	return opt, f.hostPIDsOption(&opt) // hostpids.go
}

func runRestore(args []string) int {
	var f restoreFlags
	fs := f.flagSet()
	if code, stop := fs.Parse(args); stop {
		return code
	}
	opt, why := f.options(fs.Args())
	if why != "" {
		return fs.Fail("%s", why)
	}
	// What this process inherited (an agent's client passes the image
	// directory as fd 3) is not for the restored tasks, which share its fd
	// table until their exec.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	d, err := openDiag("nsinit restore", f.log, f.dir, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit restore: %v\n", err)
		return exitStatus(err)
	}
	defer d.close()
	if f.via != "" || f.newPidns {
		if tr, err := imagefile.Read(f.dir); err == nil && tr.StateRecorded && f.payload == "" {
			err := fmt.Errorf("%w: an image dumped with --state is restored directly, not through an agent or --into-new-pidns (yet); --payload exec|stopped restores it without its state", state.ErrUnsupported)
			d.errorf("%v", err)
			return exitStatus(err)
		}
		if f.payload == "" {
			f.payload = "exec"
		}
	}
	if f.via != "" {
		return restoreViaAgent(d, f.via, f.dir, f.payload, f.placement, f.pidfile)
	}
	if err := restorer.ArchSupported(); err != nil && !f.dry {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if f.newPidns {
		return restoreIntoNewPidns(f.dir, f.innerArgs(opt), f.detach, f.pidfile)
	}
	return f.restoreHere(d, opt)
}

// innerArgs are the options of the restore that runs inside the new pid
// namespace of --into-new-pidns. It always detaches (the namespace's init
// adopts the root); the tree keeps the caller's stdio unless -d says not.
// The new namespace holds no session or group from outside the tree: the
// tree takes PID 1's, as with --shell-job.
func (f *restoreFlags) innerArgs(opt restorer.Options) []string {
	pass := []string{"--no-print-root", "--shell-job", "--payload", f.payload, "--placement", f.placement, "--agent-timeout", f.agentTimeout.String()}
	if !f.detach || f.inheritStdio {
		pass = append(pass, "--inherit-stdio")
	}
	if f.log.progress {
		pass = append(pass, "--progress")
	}
	if opt.Root != "" {
		pass = append(pass, "--root", opt.Root)
	}
	if opt.HostMounts {
		pass = append(pass, "--mounts", "host")
	}
	if opt.SkipMissingBinds {
		pass = append(pass, "--skip-missing-binds")
	}
	return pass
}

// restoreHere plans the image and runs the plan from this process: with
// -d it prints the root's pid and returns once the tree is up, else it
// stays the root's parent and exits with its status, like criu restore.
func (f *restoreFlags) restoreHere(d *diag, opt restorer.Options) int {
	// A task that was an nsinit agent becomes one again: this binary.
	if exe, err := os.Executable(); err == nil {
		opt.AgentExe = exe
	}
	// Decided before planning, never during execution.
	opt.Features = restorer.ProbeFeatures()
	tr, err := imagefile.Read(f.dir)
	if err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	// An image with state continues its programs: the stopped payload
	// creates the tasks, state.Restore fills them in (docs/state.md).
	// Only an explicit --payload restores it without its state.
	withState := tr.StateRecorded && f.payload == ""
	if withState && opt.HostPIDsAny {
		err := fmt.Errorf("%w: an image dumped with --state is filled in by level-0 pid, not with --host-pids any (yet); --payload exec|stopped restores it without its state", state.ErrUnsupported)
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if withState {
		if err := state.Check(f.dir, tr); err != nil {
			d.errorf("%v", err)
			return exitStatus(err)
		}
		opt.Payload = restorer.PayloadStopped
	}
	plan, err := restorer.NewPlan(tr, opt)
	if err != nil {
		d.errorf("plan: %v", err)
		return exitStatus(err)
	}
	d.logf(1, "image %s: %d tasks, plan of %d steps", f.dir, len(tr.Tasks), len(plan.Steps))
	for _, err := range restorer.MissingBinds(tr, opt) {
		if !opt.SkipMissingBinds {
			d.errorf("%v", err)
			return exitStatus(err)
		}
		d.errorf("warning: left out: %v", err)
	}
	if f.dry {
		fmt.Print(plan)
		return 0
	}
	// A detached tree must not hold its caller's pipe or terminal: nsinit
	// returns once it is up, and `pid=$(nsinit restore -d)` sees end of file.
	var execOpt = restorer.ExecOptions{AgentTimeout: f.agentTimeout}
	if f.detach && !f.inheritStdio {
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
	stopProgress := func() {}
	if !opt.HostPIDsAny { // it counts the image's level-0 pids
		stopProgress = watchRestore(newProgress("nsinit restore", "created", f.log.progress), plan)
	}
	res, err := restorer.ExecuteContext(ctx, plan, execOpt)
	stopProgress()
	stopSignals()
	if err != nil {
		d.errorf("%v", err)
		if errors.Is(err, restorer.ErrInterrupted) {
			d.errorf("%v: everything it created is gone", *sig)
		}
		return exitStatus(err)
	}
	defer res.Close()
	d.logf(1, "restored %d tasks in %v, root pid %d", len(tr.Tasks), time.Since(start).Round(time.Millisecond), res.Root)
	if withState {
		o := state.Options{NullStdio: f.detach && !f.inheritStdio, Log: func(format string, a ...any) { d.logf(1, format, a...) }}
		if err := state.Restore(f.dir, tr, o); err != nil {
			d.errorf("%v", err)
			killRestored(tr, res)
			return exitStatus(err)
		}
	}
	if err := writePidfile(f.pidfile, res.Root); err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if err := writePidMap(f.pidMap, res.HostPIDs); err != nil {
		d.errorf("%v", err)
		return exitStatus(err)
	}
	if f.detach {
		if !f.quietRoot {
			fmt.Println(res.Root)
		}
		return 0
	}
	_, st, err := sys.WaitPidfd(res.RootPidfd(), 0)
	if err != nil {
		d.errorf("wait for root %d: %v", res.Root, err)
		return exitFailure
	}
	return supervise.ShellStatus(syscall.WaitStatus(st))
}

// watchRestore shows the restore's progress until stop is called: how
// many of the image's level-0 pids exist, counted in a listing of /proc
// every 200ms (the pids were free when the restore began: it refuses a
// taken one). The restorer is not asked, so its executor stays as it is;
// the count is of tasks created, zombies included, helpers not.
func watchRestore(p *progress, plan *restorer.Plan) (stop func()) {
	if !p.on {
		return func() {}
	}
	want := make(map[string]bool, len(plan.Procs))
	for _, pr := range plan.Procs {
		if !pr.IsHelper() && pr.PIDs[0] > 0 {
			want[strconv.Itoa(pr.PIDs[0])] = true
		}
	}
	count := func() {
		names, err := readDirNames("/proc")
		if err != nil {
			return
		}
		done := 0
		for _, n := range names {
			if want[n] {
				done++
			}
		}
		p.update("created", done, len(want))
	}
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				count()
			}
		}
	}()
	return func() {
		close(quit)
		<-finished
		if p.shown || !p.tty {
			count() // the final figure, where progress is shown
		}
		p.done()
	}
}

// readDirNames lists a directory's names, unsorted.
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
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

// killRestored kills a committed tree whose state could not be restored,
// children first, and reaps its root (the rest are reaped by their
// parents, which die too, and by the pid namespaces' inits).
func killRestored(tr *pstree.Tree, res *restorer.Restored) {
	for i := len(tr.Tasks) - 1; i >= 0; i-- {
		_ = unix.Kill(tr.Tasks[i].PIDs[0], unix.SIGKILL)
	}
	_, _, _ = sys.WaitPidfd(res.RootPidfd(), 0)
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
