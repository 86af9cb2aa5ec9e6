package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

func init() { register("show", "print an image as JSON", runShow) }

func runShow(args []string) int {
	fs := newFlags("nsinit show", "nsinit show DIR", "Prints the image in DIR as JSON, like crit show.")
	fs.Interspersed = true
	if code, stop := fs.Parse(args); stop {
		return code
	}
	if len(fs.Args()) != 1 {
		return fs.Fail("one image directory expected")
	}
	tr, err := imagefile.Read(fs.Args()[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
		return exitStatus(err)
	}
	b, err := pstree.JSON(tr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
		return exitStatus(err)
	}
	os.Stdout.Write(b)
	return 0
}
