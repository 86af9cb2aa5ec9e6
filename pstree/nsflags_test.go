package pstree

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestCloneFlags(t *testing.T) {
	var s NSSet
	s[NetNS], s[UTSNS], s[PidForChildrenNS] = 3, 4, 5
	if got, want := s.CloneFlags(), uint64(unix.CLONE_NEWNET|unix.CLONE_NEWUTS); got != want {
		t.Errorf("CloneFlags = %#x, want %#x", got, want)
	}
	for _, k := range AllNSKinds() {
		if f := k.CloneFlag(); (f == 0) != (k == PidForChildrenNS) {
			t.Errorf("%v: flag %#x", k, f)
		}
	}
	if NSKind(99).CloneFlag() != 0 {
		t.Error("out of range kind has a flag")
	}
}
