package check

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nsinit/nsinit/pstree"
)

// A pid map says which level-0 pid each task of an image (and each dead
// session or group leader, whose number its members keep) got in a restore
// that let the kernel choose them (`restore --host-pids any --pid-map
// FILE`): one "IMAGE LIVE" pair a line. check renames the image through it
// (Options.HostPIDs) and compares as usual, so every deeper level must be
// exact and level 0 consistent: each task's pid, parent, session and group
// at level 0 are what the map makes of the image's.

// FormatPIDMap writes m as a pid map, sorted by image pid.
func FormatPIDMap(m map[int]int) []byte {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%d %d\n", k, m[k])
	}
	return b.Bytes()
}

// ParsePIDMap reads a pid map; every pid is in 1..pstree.MaxPID and
// appears once on each side.
func ParsePIDMap(b []byte) (map[int]int, error) {
	m, seen := map[int]int{}, map[int]bool{}
	for n, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("pid map line %d: %q is not two pids", n+1, line)
		}
		a, err1 := strconv.Atoi(f[0])
		z, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || a <= 0 || z <= 0 || a > pstree.MaxPID || z > pstree.MaxPID {
			return nil, fmt.Errorf("pid map line %d: %q is not two pids", n+1, line)
		}
		if _, dup := m[a]; dup || seen[z] {
			return nil, fmt.Errorf("pid map line %d: pid %d or %d mapped twice", n+1, a, z)
		}
		m[a], seen[z] = z, true
	}
	return m, nil
}

// renameHostPIDs returns a copy of img whose level-0 numbers - pids,
// parents, parent threads, sessions and groups - are renamed through m.
// A number m does not name (a leader outside the tree) stays.
func renameHostPIDs(img *pstree.Tree, m map[int]int) *pstree.Tree {
	name := func(n int) int {
		if v, ok := m[n]; ok {
			return v
		}
		return n
	}
	cp := *img
	cp.Tasks = slices.Clone(img.Tasks)
	for i := range cp.Tasks {
		t := &cp.Tasks[i]
		t.PIDs, t.SIDs, t.PGIDs = slices.Clone(t.PIDs), slices.Clone(t.SIDs), slices.Clone(t.PGIDs)
		t.PIDs[0], t.SIDs[0], t.PGIDs[0] = name(t.PIDs[0]), name(t.SIDs[0]), name(t.PGIDs[0])
		t.PPID = name(t.PPID)
		t.ParentTID = name(t.ParentTID)
	}
	return &cp
}
