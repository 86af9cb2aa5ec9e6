package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/check"
	"github.com/nsinit/nsinit/imagefile"
)

func init() {
	register("check", "without -t/-D: what this kernel supports (as criu check); with them: compare an image with a live tree", runCheck)
}

func runCheck(args []string) int {
	var (
		pid         int
		dir         string
		leftStopped bool
		shellJob    bool
		asJSON      bool
		pidMap      string
	)
	fs := newFlags("nsinit check", "nsinit check [--json] | nsinit check -t PID -D DIR [--left-stopped] [-j] [--pid-map FILE]",
		"Without -t and -D: probes what dump and restore need from this kernel and this\n"+
			"caller (as criu check does), one line each, and what a missing piece disables.\n"+
			"Exit status 0: all that a dump and a restore need works; 203: only capabilities\n"+
			"or permissions are missing; 204: the kernel lacks a required piece.\n"+
			"With -t and -D: lists every difference between the image in DIR and the live tree\n"+
			"rooted at PID. Exit status 0: identical; 1: differences, one a line on stdout; 125\n"+
			"and up: could not compare (README, \"Exit status\").")
	fs.Int(&pid, "t,tree", "PID", "level-0 pid of the root of the live tree")
	fs.String(&dir, "D,images-dir", "DIR", "image directory")
	fs.Bool(&shellJob, "j,shell-job", "the tree was restored with --shell-job: the session and group its root had from outside the tree are compared as the live root's")
	fs.Bool(&leftStopped, "left-stopped", "the tree was left stopped by dump --leave-stopped: a task live in the image may be stopped")
	fs.String(&pidMap, "pid-map", "FILE", "the tree was restored with --host-pids any --pid-map FILE: the image's level-0 pids, parents, sessions and groups are compared through it")
	fs.Bool(&asJSON, "json", "probe: print the results as JSON")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	switch {
	case pid == 0 && dir == "" && !leftStopped && !shellJob && pidMap == "" && len(fs.Args()) == 0:
		return runProbe(asJSON)
	case asJSON:
		return fs.Fail("--json goes with the probe (no -t/-D)")
	case pid <= 0:
		return fs.Fail("-t/--tree PID is required")
	case dir == "":
		return fs.Fail("-D/--images-dir DIR is required")
	case len(fs.Args()) != 0:
		return fs.Fail("unexpected argument %q", fs.Args()[0])
	}
	img, err := imagefile.Read(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
		return exitStatus(err)
	}
	var hostPIDs map[int]int
	if pidMap != "" {
		b, err := os.ReadFile(pidMap)
		if err == nil {
			hostPIDs, err = check.ParsePIDMap(b)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
			return exitStatus(err)
		}
	}
	live, err := check.ReadLive(pid)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
		return exitStatus(err)
	}
	if readSubreapers != nil {
		// compared only when both the image and the live tree have them
		if set, err := readSubreapers(); err == nil {
			live.MarkSubreapers(set)
		}
	}
	diffs := check.CompareWith(img, live, check.Options{LeftStopped: leftStopped, ShellJob: shellJob, HostPIDs: hostPIDs})
	for _, d := range diffs {
		fmt.Println(d)
	}
	if len(diffs) > 0 {
		return 1
	}
	return 0
}
