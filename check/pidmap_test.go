package check

import (
	"strings"
	"testing"
)

// TestPIDMap: a pid map round-trips, bad ones are refused, and an image
// renamed through one compares equal with a tree whose level-0 pids,
// parents, sessions and groups are the map's image of the image's, while
// a deeper level that differs is still a difference.
func TestPIDMap(t *testing.T) {
	m := map[int]int{10: 40, 11: 41, 12: 42}
	got, err := ParsePIDMap(FormatPIDMap(m))
	if err != nil || len(got) != 3 || got[10] != 40 || got[12] != 42 {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"10", "10 x", "10 0", "10 40\n10 41", "10 40\n11 40", "10 99999999999", "4194305 10"} {
		if _, err := ParsePIDMap([]byte(bad)); err == nil {
			t.Errorf("pid map %q accepted", bad)
		}
	}
	img, live := tree(), renumber(tree())
	for i := range live.Tasks {
		lt := &live.Tasks[i]
		lt.PIDs[0], lt.SIDs[0], lt.PGIDs[0] = m[lt.PIDs[0]], m[lt.SIDs[0]], m[lt.PGIDs[0]]
		if lt.PPID != 0 {
			lt.PPID = m[lt.PPID]
		}
		for j := range lt.Threads {
			lt.Threads[j].TIDs[0] += 30
		}
	}
	img.Tasks[1].Threads[0].TIDs[0] += 30 // threads are not in the map: not renamed
	if d := CompareWith(img, live, Options{HostPIDs: m}); len(d) != 0 {
		t.Errorf("renamed through the map: %v", d)
	}
	if d := CompareWith(img, live, Options{}); len(d) == 0 {
		t.Errorf("without the map: no difference")
	}
	live.Tasks[2].PIDs[1] = 9
	d := CompareWith(img, live, Options{HostPIDs: m})
	if len(d) != 1 || !strings.Contains(d[0].String(), "pids") {
		t.Errorf("a deeper level differs: %v", d)
	}
}
