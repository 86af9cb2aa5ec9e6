package vmtest

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// cpioWriter writes an uncompressed "newc" cpio archive, the format the
// kernel unpacks into the initramfs (Documentation/driver-api/early-userspace/
// buffer-format.rst). A fresh machine has no cpio binary, and the format is
// a fixed ASCII header, the name and the data, each padded to 4 bytes.
// The kernel boots an uncompressed archive fastest under emulation.
type cpioWriter struct {
	w    *bufio.Writer
	ino  int
	err  error
	dirs map[string]bool
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1, dirs: map[string]bool{".": true, "/": true}}
}

// Linux mode bits for the archive (fs.FileMode's are Go's own).
const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// header writes one entry. name is made relative (no leading "/").
func (c *cpioWriter) header(name string, mode uint32, size int, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		name = "."
	}
	c.ino++
	// 13 fields of 8 hex digits after the magic: ino mode uid gid nlink
	// mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
	_, c.err = fmt.Fprintf(c.w, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0, name)
	c.pad(110 + len(name) + 1)
}

func (c *cpioWriter) pad(n int) {
	if c.err == nil && n%4 != 0 {
		_, c.err = c.w.Write(make([]byte, 4-n%4))
	}
}

// parents creates the missing parent directories of name, 0755.
func (c *cpioWriter) parents(name string) {
	dir := path.Dir(path.Clean("/" + name))
	if c.dirs[dir] {
		return
	}
	c.parents(dir)
	c.Dir(dir, 0o755)
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm fs.FileMode) {
	name = path.Clean("/" + name)
	if c.dirs[name] {
		return
	}
	c.parents(name)
	c.dirs[name] = true
	c.header(name, sIFDIR|uint32(perm.Perm()), 0, 0, 0)
}

// File adds a regular file of size bytes read from r.
func (c *cpioWriter) File(name string, perm fs.FileMode, size int64, r io.Reader) {
	c.parents(name)
	c.header(name, sIFREG|uint32(perm.Perm()), int(size), 0, 0)
	if c.err != nil {
		return
	}
	n, err := io.CopyN(c.w, r, size)
	if err != nil {
		c.err = fmt.Errorf("cpio: file %s: %w", name, err)
		return
	}
	c.pad(int(n))
}

// Symlink adds a symbolic link name -> target.
func (c *cpioWriter) Symlink(name, target string) {
	c.parents(name)
	c.header(name, sIFLNK|0o777, len(target), 0, 0)
	if c.err == nil {
		_, c.err = io.WriteString(c.w, target)
		c.pad(len(target))
	}
}

// CharDev adds a character device node (e.g. /dev/console 5:1, so the
// kernel can open the console for init before devtmpfs is mounted).
func (c *cpioWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) {
	c.parents(name)
	c.header(name, sIFCHR|uint32(perm.Perm()), 0, major, minor)
}

// Close writes the trailer and flushes; it returns the first error.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	return c.err
}
