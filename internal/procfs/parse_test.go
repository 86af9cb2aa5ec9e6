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
