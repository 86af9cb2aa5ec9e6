package dump_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/nsinit/nsinit/bpf"
	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/imagefile"
)

// Dump freezes the tree rooted at a live process, reads it into a
// pstree.Tree and thaws it again; imagefile.Write stores the image that
// `nsinit restore` reads. It needs root and a live tree, so this example
// is compiled but not run. With a guard (the eBPF watcher of package bpf)
// the dump is checked: a fork, exit or exec in the tree while it was read
// makes Dump try again, and ErrRaced after the last attempt.
func ExampleDump() {
	root := 12345 // the tree's root, a pid of the caller's pid namespace
	tr, err := dump.Dump(root, dump.Options{
		Proc: "/proc",
		// Loaded beside the freeze; armed once the tree is frozen.
		LoadGuard: func() (dump.Guard, error) {
			g, err := bpf.NewGuard()
			if err != nil {
				return nil, err // no typed nil inside the interface
			}
			return g, nil
		},
		Subreapers: bpf.Subreapers, // which tasks are child subreapers
	})
	switch {
	case errors.Is(err, dump.ErrNoGuard):
		fmt.Println("no eBPF guard here (no BTF, CAP_BPF or CAP_PERFMON); dump without Guard/LoadGuard for an unchecked image")
		return
	case err != nil:
		fmt.Println(err)
		return
	}
	if err := imagefile.Write("/var/lib/images/tree1", tr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println(len(tr.Tasks), "tasks, checked:", tr.Checked)
}
