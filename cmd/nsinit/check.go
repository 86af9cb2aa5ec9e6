package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nsinit/nsinit/check"
	"github.com/nsinit/nsinit/imagefile"
)

func init() { register("check", "compare an image with a live tree", runCheck) }

func runCheck(args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: nsinit check -t PID -D DIR [--left-stopped]   (exit 0: identical, 1: differences listed)")
		fs.PrintDefaults()
	}
	pid := fs.Int("t", 0, "level-0 `pid` of the root of the live tree")
	dir := fs.String("D", "", "image `directory`")
	leftStopped := fs.Bool("left-stopped", false, "the tree was left stopped by dump --leave-stopped: a task live in the image may be stopped")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pid <= 0 || *dir == "" || fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	img, err := imagefile.Read(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
		return 2
	}
	live, err := check.ReadLive(*pid)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
		return 2
	}
	diffs := check.CompareWith(img, live, check.Options{LeftStopped: *leftStopped})
	for _, d := range diffs {
		fmt.Println(d)
	}
	if len(diffs) > 0 {
		return 1
	}
	return 0
}
