package procfs

import "testing"

func TestStatusFieldAndStatState(t *testing.T) {
	st := []byte("Name:\tsh\nState:\tZ (zombie)\nNSpid:\t7\t1\n")
	for key, want := range map[string]string{"Name": "sh", "State": "Z (zombie)", "NSpid": "7 1", "PPid": ""} {
		if got := StatusField(st, key); got != want {
			t.Errorf("StatusField(%s) = %q, want %q", key, got, want)
		}
	}
	if got := StatState([]byte("12 (a) b) (c) T 1 2")); got != 'T' {
		t.Errorf("StatState = %q, want 'T'", got)
	}
	if got := StatState([]byte("12 (x")); got != 0 {
		t.Errorf("StatState of a cut line = %q, want 0", got)
	}
}

func TestParseMountInfo(t *testing.T) {
	text := "36 35 98:0 /mnt1 /mnt\\0402 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n" +
		"40 36 0:22 / /proc rw,nosuid - proc proc rw\n"
	ms, err := ParseMountInfo([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []MountInfo{
		{ID: 36, Parent: 35, Major: 98, Root: "/mnt1", Point: "/mnt 2", Options: "rw,noatime", FSType: "ext3", Source: "/dev/root", SuperOptions: "rw,errors=continue"},
		{ID: 40, Parent: 36, Minor: 22, Root: "/", Point: "/proc", Options: "rw,nosuid", FSType: "proc", Source: "proc", SuperOptions: "rw"},
	}
	if len(ms) != len(want) || ms[0] != want[0] || ms[1] != want[1] {
		t.Errorf("got %+v\nwant %+v", ms, want)
	}
	if _, err := ParseMountInfo([]byte("1 2 x / / rw - a b c\n")); err == nil {
		t.Error("bad device accepted")
	}
	if _, err := SelfMountInfo(); err != nil {
		t.Error(err)
	}
}
