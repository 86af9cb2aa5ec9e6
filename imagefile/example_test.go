package imagefile_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

// An image directory holds one file, pstree.img: a header (magic, version,
// length, checksum) and the protobuf encoding of a pstree.Tree. Write
// validates the tree and stores it atomically; Read checks the header,
// decodes and validates again, as it would any untrusted file.
func Example() {
	dir, err := os.MkdirTemp("", "image")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	// One task: host pid 4242, leading its own session and group.
	t := pstree.Task{PIDs: []int{4242}, SIDs: []int{4242}, PGIDs: []int{4242},
		Exe: "/bin/sleep", Argv: []string{"sleep", "1000"}, Cwd: "/"}
	t.NS[pstree.PidNS] = 1
	tr := &pstree.Tree{
		Namespaces: []pstree.Namespace{{ID: 1, Kind: pstree.PidNS, Level: 0, LastPID: 4242}},
		Tasks:      []pstree.Task{t},
	}
	if err := imagefile.Write(dir, tr); err != nil {
		fmt.Println(err)
		return
	}

	back, err := imagefile.Read(dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	root := &back.Tasks[0]
	fmt.Println("root:", root.PID(), root.Argv, "session:", root.SIDs[0])
	fmt.Println("cursor of level 0:", back.Namespace(root.NS[pstree.PidNS]).LastPID)

	// A damaged file is refused by its checksum before anything is decoded.
	b, _ := os.ReadFile(dir + "/" + imagefile.FileName)
	b[len(b)-1] ^= 0xff
	_, err = imagefile.Decode(b)
	fmt.Println("damaged:", errors.Is(err, imagefile.ErrFormat))
	// Output:
	// root: 4242 [sleep 1000] session: 4242
	// cursor of level 0: 4242
	// damaged: true
}
