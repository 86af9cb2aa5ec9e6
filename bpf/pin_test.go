package bpf

import (
	"testing"
	"time"
)

// newNSGets starts a shell in a new pid namespace, runs a command there,
// ends it, and reports whether its namespace had inode number ino.
func newNSGets(t *testing.T, ino uint32) bool {
	b := startShell(t)
	defer b.kill()
	b.run("/bin/busybox true")
	return b.inode == ino
}

// TestPinnedNamespaceNotRecycled: pid namespace inode numbers are recycled
// as soon as a namespace dies. First show that here (a dead namespace's
// number goes to the next new one); then watch a namespace, let the caller
// close its fd and the namespace's last task die, and check that new
// namespaces never get its number (the watcher's pinned fd keeps it alive)
// and that their events are not counted.
func TestPinnedNamespaceNotRecycled(t *testing.T) {
	w := loadWatcher(t)

	// Without a pin the number comes back (the namespace is freed lazily,
	// so keep making namespaces for a while).
	a := startShell(t)
	ino := a.inode
	a.kill()
	tries := 0
	for ; tries < 100 && !newNSGets(t, ino); tries++ {
		time.Sleep(20 * time.Millisecond)
	}
	if tries == 100 {
		// Someone else's new namespace may have taken it first.
		t.Logf("inode %d of a dead pid namespace not seen again in 100 tries", ino)
	} else {
		t.Logf("without a pin, inode %d of a dead pid namespace was reused after %d tries", ino, tries+1)
	}

	// With the watcher's pin it is not, and nothing is counted.
	a = startShell(t)
	ino, err := w.WatchNS(a.nsFD)
	if err != nil {
		t.Fatal(err)
	}
	a.kill() // closes the caller's fd too
	if err := w.Attach(); err != nil {
		t.Fatal(err)
	}
	for range 2*tries + 10 {
		if newNSGets(t, ino) {
			t.Fatalf("a new pid namespace got the pinned inode number %d", ino)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := w.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if c.Events != 0 {
		t.Errorf("%d events counted from namespaces that are not watched: %v", c.Events, drain(t, w))
	}
	// Reset drops the pin.
	if err := w.Reset(); err != nil {
		t.Fatal(err)
	}
	if len(w.pinned) != 0 {
		t.Errorf("pins left after Reset: %v", w.pinned)
	}
}
