package main

import (
	"fmt"
	"os"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

func init() { register("show", "print an image as JSON", runShow) }

func runShow(args []string) int {
	if len(args) != 1 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(os.Stderr, "usage: nsinit show DIR")
		return 2
	}
	tr, err := imagefile.Read(args[0])
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
