package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/cliflag"
	"github.com/nsinit/nsinit/pstree"
)

func init() { register("show", "print an image as JSON", runShow) }

func runShow(args []string) int {
	fs := cliflag.New("nsinit show", "nsinit show DIR", "Prints the image in DIR as JSON, like crit show.")
	fs.SetVersion(version)
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
		return 1
	}
	b, err := pstree.JSON(tr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
		return 1
	}
	os.Stdout.Write(b)
	return 0
}
