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
	for _, k := range AllNSKinds() {
		if k == PidForChildrenNS {
			continue
		}
		if got, ok := KindOfCloneFlag(k.CloneFlag()); !ok || got != k {
			t.Errorf("KindOfCloneFlag(%v's flag) = %v, %v", k, got, ok)
		}
	}
	if _, ok := KindOfCloneFlag(0); ok {
		t.Error("flag 0 has a kind")
	}
	if NSKind(99).CloneFlag() != 0 {
		t.Error("out of range kind has a flag")
	}
}
