package nsid

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOwnNamespaces(t *testing.T) {
	pid, err := unix.Open("/proc/self/ns/pid", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pid)
	// The parent of our own pid namespace is hidden from us.
	if fd, err := Parent(pid); !errors.Is(err, ErrNotVisible) {
		unix.Close(fd)
		t.Fatalf("Parent of own pid ns: %v, want ErrNotVisible", err)
	}
	owner, err := Owner(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(owner)
	got, err := Inode(owner)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &st); err != nil {
		t.Fatal(err)
	}
	if got != st.Ino {
		t.Errorf("owner of our pid ns is inode %d, our user ns is %d", got, st.Ino)
	}
	if uid, err := OwnerUID(owner); err != nil || (os.Getuid() == 0 && uid != 0) {
		t.Errorf("OwnerUID = %d, %v", uid, err)
	}
}

func TestType(t *testing.T) {
	for name, want := range map[string]int{"pid": unix.CLONE_NEWPID, "user": unix.CLONE_NEWUSER, "net": unix.CLONE_NEWNET} {
		fd, err := unix.Open("/proc/self/ns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Type(fd)
		unix.Close(fd)
		if err != nil || got != want {
			t.Errorf("Type(%s) = %#x, %v; want %#x", name, got, err, want)
		}
	}
	if _, err := Type(0); err == nil {
		t.Error("Type of a non-namespace fd succeeded")
	}
}
