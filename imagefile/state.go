package imagefile

import (
	"fmt"
	"path/filepath"

	"github.com/nsinit/nsinit/proto/imagepb"
	"google.golang.org/protobuf/proto"
)

// StateFileName holds the task state of `nsinit dump --state`
// (docs/state.md): the header of pstree.img with StateMagic, then one
// imagepb.StateImage. Its page contents are in a file of their own
// (package state), outside MaxFile.
const StateFileName = "state.img"

// StateMagic starts a state file.
const StateMagic = "NSINITST"

// WriteState stores s as DIR/state.img, atomically.
func WriteState(dir string, s *imagepb.StateImage) error {
	opts := proto.MarshalOptions{Deterministic: true}
	n := opts.Size(s)
	if n > MaxPayload {
		return fmt.Errorf("write state: payload of %d bytes exceeds %d", n, MaxPayload)
	}
	b, err := opts.MarshalAppend(make([]byte, HeaderSize, HeaderSize+n), s)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	putHeader(b, StateMagic)
	return WriteBytes(filepath.Join(dir, StateFileName), b)
}

// ReadState loads DIR/state.img. Like Read it treats the file as hostile
// (readFile, the header's checks); what the messages say is for package
// state to validate.
func ReadState(dir string) (*imagepb.StateImage, error) {
	p := filepath.Join(dir, StateFileName)
	b, err := readFile(p)
	if err == nil {
		b, err = checkFrame(b, StateMagic)
	}
	var s imagepb.StateImage
	if err == nil {
		if uerr := proto.Unmarshal(b, &s); uerr != nil {
			err = fmt.Errorf("%w: %w", ErrFormat, uerr)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read state %s: %w", p, err)
	}
	return &s, nil
}
