package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/check"
	"github.com/nsinit/nsinit/imagefile"
)

func init() { register("check", "compare an image with a live tree", runCheck) }

func runCheck(args []string) int {
	var (
		pid         int
		dir         string
		leftStopped bool
		shellJob    bool
	)
	fs := newFlags("nsinit check", "nsinit check -t PID -D DIR [--left-stopped] [-j]",
		"Lists every difference between the image in DIR and the live tree rooted at PID.\n"+
			"Exit status 0: identical; 1: differences, one a line on stdout; 125 and up: could\nnot compare (README, \"Exit status\").")
	fs.Int(&pid, "t,tree", "PID", "level-0 pid of the root of the live tree")
	fs.String(&dir, "D,images-dir", "DIR", "image directory")
	fs.Bool(&shellJob, "j,shell-job", "the tree was restored with --shell-job: the session and group its root had from outside the tree are compared as the live root's")
	fs.Bool(&leftStopped, "left-stopped", "the tree was left stopped by dump --leave-stopped: a task live in the image may be stopped")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	switch {
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
	diffs := check.CompareWith(img, live, check.Options{LeftStopped: leftStopped, ShellJob: shellJob})
	for _, d := range diffs {
		fmt.Println(d)
	}
	if len(diffs) > 0 {
		return 1
	}
	return 0
}
