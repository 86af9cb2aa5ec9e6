package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

func init() {
	register("show", "print an image as JSON", runShow)
	register("encode", "turn the JSON of show --raw back into an image", runEncode)
}

func runShow(args []string) int {
	var raw bool
	fs := newFlags("nsinit show", "nsinit show [--raw] DIR|FILE",
		"Prints the image in DIR (DIR/pstree.img) or in FILE as JSON, like crit show. The\n"+
			"default form is for reading (decoded exit statuses, text); --raw prints the\n"+
			"image's protobuf message as protojson, which nsinit encode turns back into an image.")
	fs.Bool(&raw, "raw", "print the stored protobuf message as protojson, even one that fails validation")
	fs.Interspersed = true
	if code, stop := fs.Parse(args); stop {
		return code
	}
	if len(fs.Args()) != 1 {
		return fs.Fail("one image directory or file expected")
	}
	b, file, err := imagefile.ReadPath(fs.Args()[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
		return exitStatus(err)
	}
	if raw {
		js, invalid, err := imagefile.RawJSON(b)
		if err != nil {
			fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
			return exitStatus(err)
		}
		os.Stdout.Write(js)
		if invalid != nil {
			fmt.Fprintf(os.Stderr, "nsinit show: read image %s: not a valid image: %v\n", file, invalid)
			return exitStatus(invalid)
		}
		return 0
	}
	tr, err := imagefile.Decode(b)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: read image %s: %v\n", file, err)
		return exitStatus(err)
	}
	js, err := pstree.JSON(tr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit show: %v\n", err)
		return exitStatus(err)
	}
	os.Stdout.Write(js)
	return 0
}

func runEncode(args []string) int {
	var in, dir, out string
	fs := newFlags("nsinit encode", "nsinit encode [-i JSON] (-D DIR | -o FILE)",
		"Reads the raw JSON form of an image (nsinit show --raw), validates it as\n"+
			"every image read is validated, and writes it to DIR/pstree.img or FILE, like crit encode.")
	fs.String(&in, "i,input", "JSON", "read the JSON from this file (default: stdin)")
	fs.String(&dir, "D,images-dir", "DIR", "write DIR/pstree.img (DIR created if missing)")
	fs.String(&out, "o,output", "FILE", "write the image to FILE")
	if code, stop := fs.Parse(args); stop {
		return code
	}
	switch {
	case (dir == "") == (out == ""):
		return fs.Fail("one of -D DIR and -o FILE is required")
	case len(fs.Args()) != 0:
		return fs.Fail("unexpected argument %q", fs.Args()[0])
	}
	var js []byte
	var err error
	if in == "" || in == "-" {
		js, err = io.ReadAll(io.LimitReader(os.Stdin, 4*imagefile.MaxFile))
	} else {
		js, err = os.ReadFile(in)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit encode: %v\n", err)
		return exitStatus(err)
	}
	b, err := imagefile.FromRawJSON(js)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nsinit encode: %v\n", err)
		return exitStatus(err)
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			fmt.Fprintf(os.Stderr, "nsinit encode: %v\n", err)
			return exitStatus(err)
		}
		out = filepath.Join(dir, imagefile.FileName)
	}
	if err := imagefile.WriteBytes(out, b); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit encode: %v\n", err)
		return exitStatus(err)
	}
	return 0
}
