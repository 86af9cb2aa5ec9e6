package imagefile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsinit/nsinit/proto/imagepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// The raw form of an image is its protobuf message as protojson: what
// `nsinit show --raw` prints and `nsinit encode` turns back into an image,
// for tests and hand-edited images. Field names are the .proto's
// (proto/image.proto); bytes fields (argv, environment, paths) are base64,
// as protojson writes bytes.

// ReadPath reads the image bytes at path: DIR/pstree.img when path is a
// directory, else the file itself, untrusted like Read's. file is the path
// read, for messages ("read image FILE: ...", as Read names it).
func ReadPath(path string) (b []byte, file string, err error) {
	file = path
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		file = filepath.Join(path, FileName)
	}
	b, err = readFile(file)
	if err != nil {
		return nil, file, fmt.Errorf("read image %s: %w", file, err)
	}
	return b, file, nil
}

// RawJSON checks the header of image bytes b (magic, major version,
// length, checksum) and returns the payload as indented protojson, without
// validating what it describes: a raw view must show an image the model
// refuses too. The error of Decode, if any, is returned beside the JSON.
func RawJSON(b []byte) (js []byte, invalid error, err error) {
	img, err := decodeRaw(b)
	if err != nil {
		return nil, nil, err
	}
	js, err = protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(img)
	if err != nil {
		return nil, nil, fmt.Errorf("raw image: %w", err)
	}
	_, invalid = Decode(b)
	return append(js, '\n'), invalid, nil
}

// FromRawJSON turns the raw form back into image bytes, validated as
// Decode validates: what it returns, Decode accepts. Unknown fields are an
// error (a typo in a hand-edited image must not vanish).
func FromRawJSON(js []byte) ([]byte, error) {
	var img imagepb.Image
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &img); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	tr, err := fromProto(&img)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return Encode(tr)
}

// WriteBytes stores image bytes b at path atomically (temporary file in the
// same directory, then rename). The bytes must come from Encode or
// FromRawJSON.
func WriteBytes(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".pstree.img.*")
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write image %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write image %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write image %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	return nil
}

// decodeRaw is Decode without the conversion and validation.
func decodeRaw(b []byte) (*imagepb.Image, error) {
	payload, err := checkHeader(b)
	if err != nil {
		return nil, err
	}
	var img imagepb.Image
	if err := proto.Unmarshal(payload, &img); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return &img, nil
}
