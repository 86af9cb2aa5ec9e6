// Package imagefile reads and writes DIR/pstree.img, the on-disk form of a
// pstree.Tree: a fixed header (magic, format version, payload length and
// CRC-32C) followed by one protobuf imagepb.Image.
//
// It is the boundary of the image: Decode converts and validates
// (pstree.Validate), so what it returns can be used without re-checking its
// shape, and malformed input of any kind is an error, never a panic.
package imagefile

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
	"google.golang.org/protobuf/proto"
)

// FileName is the image file inside a dump directory.
const FileName = "pstree.img"

// Magic starts every image file.
const Magic = "NSINITIM"

// HeaderSize is the fixed header before the payload.
const HeaderSize = len(Magic) + 2 + 2 + 4 + 4

// MaxFile bounds an image file, checked before a byte of it is read, and so
// what Read allocates: a dump of 10,000 tasks takes a few MiB, and even
// pstree.MaxTasks tasks with typical environments stay far below it.
const MaxFile = 256 << 20

// MaxPayload bounds what Decode accepts: the payload of a MaxFile file.
const MaxPayload = MaxFile - HeaderSize

// ErrNotRegular is wrapped when the image path is not a regular file: a
// FIFO, a device or a symbolic link (to /dev/zero, say) would block or
// never end.
var ErrNotRegular = errors.New("not a regular file")

// ErrVersion is wrapped when the image has another major format version.
var ErrVersion = errors.New("unsupported image format version")

// ErrFormat is wrapped when the bytes are not a well-formed image.
var ErrFormat = errors.New("malformed image")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encode validates tr and returns the image bytes.
func Encode(tr *pstree.Tree) ([]byte, error) {
	if err := pstree.Validate(tr); err != nil {
		return nil, fmt.Errorf("encode image: %w", err)
	}
	// Sized first, then marshalled behind the header in one buffer: a big
	// tree's payload is megabytes, not worth a second copy.
	m := toProto(tr)
	opts := proto.MarshalOptions{Deterministic: true}
	n := opts.Size(m)
	if n > MaxPayload {
		return nil, fmt.Errorf("encode image: payload of %d bytes exceeds %d", n, MaxPayload)
	}
	opts.UseCachedSize = true
	b, err := opts.MarshalAppend(make([]byte, HeaderSize, HeaderSize+n), m)
	if err != nil {
		return nil, fmt.Errorf("encode image: %w", err)
	}
	payload := b[HeaderSize:]
	if len(payload) != n {
		return nil, fmt.Errorf("encode image: payload of %d bytes, sized %d", len(payload), n)
	}
	putHeader(b, Magic)
	return b, nil
}

// putHeader fills the first HeaderSize bytes of b, before its payload.
func putHeader(b []byte, magic string) {
	payload := b[HeaderSize:]
	copy(b, magic)
	le := binary.LittleEndian
	le.PutUint16(b[8:], pstree.FormatMajor)
	le.PutUint16(b[10:], pstree.FormatMinor)
	le.PutUint32(b[12:], uint32(len(payload)))
	le.PutUint32(b[16:], crc32.Checksum(payload, castagnoli))
}

// Decode parses and validates image bytes.
func Decode(b []byte) (*pstree.Tree, error) {
	payload, err := checkHeader(b)
	if err != nil {
		return nil, err
	}
	return DecodePayload(payload)
}

// checkHeader checks the header of image bytes b (magic, major version,
// payload length, checksum) and returns the payload.
func checkHeader(b []byte) ([]byte, error) { return checkFrame(b, Magic) }

// checkFrame is checkHeader for a file of the given magic.
func checkFrame(b []byte, magic string) ([]byte, error) {
	if len(b) < HeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrFormat, len(b), HeaderSize)
	}
	if !bytes.Equal(b[:8], []byte(magic)) {
		return nil, fmt.Errorf("%w: bad magic %q (not an nsinit image)", ErrFormat, b[:8])
	}
	le := binary.LittleEndian
	major, minor := le.Uint16(b[8:]), le.Uint16(b[10:])
	if major != pstree.FormatMajor {
		return nil, fmt.Errorf("%w: image is version %d.%d, this nsinit reads %d.x", ErrVersion, major, minor, pstree.FormatMajor)
	}
	n := le.Uint32(b[12:])
	payload := b[HeaderSize:]
	if uint64(n) != uint64(len(payload)) {
		return nil, fmt.Errorf("%w: header says %d payload bytes, file has %d (truncated?)", ErrFormat, n, len(payload))
	}
	if sum := crc32.Checksum(payload, castagnoli); sum != le.Uint32(b[16:]) {
		return nil, fmt.Errorf("%w: payload checksum %#08x, header says %#08x", ErrFormat, sum, le.Uint32(b[16:]))
	}
	return payload, nil
}

// DecodePayload parses and validates the payload of an image (the bytes
// after the header), for a caller that has checked the header already, or
// a fuzzer that wants every mutation to reach the model.
func DecodePayload(payload []byte) (*pstree.Tree, error) {
	if len(payload) > MaxPayload {
		return nil, fmt.Errorf("%w: %d payload bytes, more than %d", ErrFormat, len(payload), MaxPayload)
	}
	var img imagepb.Image
	if err := proto.Unmarshal(payload, &img); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	tr, err := fromProto(&img)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if err := pstree.Validate(tr); err != nil {
		return nil, err
	}
	return tr, nil
}

// Write stores tr as DIR/pstree.img, atomically (temporary file + rename),
// creating DIR if needed.
func Write(dir string, tr *pstree.Tree) error {
	b, err := Encode(tr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return WriteBytes(filepath.Join(dir, FileName), b)
}

// Read loads and validates DIR/pstree.img. The file is untrusted: see
// readFile.
func Read(dir string) (*pstree.Tree, error) {
	p := filepath.Join(dir, FileName)
	b, err := readFile(p)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", p, err)
	}
	tr, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", p, err)
	}
	return tr, nil
}

// readFile reads an image file that may be anything: it refuses a symbolic
// link (O_NOFOLLOW) and, from fstat before reading a byte, anything but a
// regular file of at most MaxFile bytes. O_NONBLOCK makes opening a FIFO
// return at once instead of waiting for a writer. The read is bounded too,
// for a file that grows after the fstat.
func readFile(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: a symbolic link", ErrNotRegular)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: file mode %v", ErrNotRegular, st.Mode().Type())
	}
	if st.Size() > MaxFile {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d an image may have", ErrFormat, st.Size(), MaxFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFile {
		return nil, fmt.Errorf("%w: grew past %d bytes while read", ErrFormat, MaxFile)
	}
	return b, nil
}
