package pstree

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestJSONComm: `nsinit show` prints a recorded name of a task and of a
// thread, escaped as JSON, and leaves the key out when none is recorded.
func TestJSONComm(t *testing.T) {
	tr := &Tree{Tasks: []Task{
		{PIDs: []int{10}, PGIDs: []int{10}, SIDs: []int{10}, Comm: "a\nb \"c\"", Threads: []Thread{{TIDs: []int{11}, Comm: "worker"}, {TIDs: []int{12}}}},
		{PIDs: []int{13}, PPID: 10, PGIDs: []int{10}, SIDs: []int{10}},
	}}
	b, err := JSON(tr)
	if err != nil {
		t.Fatal(err)
	}
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		t.Fatal(err)
	}
	s := c.String()
	for _, want := range []string{`"comm":"a\nb \"c\""`, `"tids":[11],"state":"live","comm":"worker"}`, `"tids":[12],"state":"live"}`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON lacks %s:\n%s", want, s)
		}
	}
	if n := strings.Count(s, `"comm"`); n != 2 {
		t.Errorf("%d comm keys, want 2 (the unnamed thread and task have none):\n%s", n, s)
	}
}
