package restorer

import (
	"slices"
	"testing"
)

// TestInitOptions: a restored agent keeps its original init options, and
// nothing of its command.
func TestInitOptions(t *testing.T) {
	for _, c := range []struct {
		argv, want []string
	}{
		{[]string{"nsinit", "--", "sh", "-c", "x"}, nil},
		{[]string{"nsinit", "-g", "-e", "3", "-p", "TERM", "--", "sh", "-e"}, []string{"-g", "-e", "3", "-p", "TERM"}},
		{[]string{"/bin/nsinit", "-s", "sleep", "-e"}, []string{"-s"}},
		{[]string{"nsinit"}, nil},
		{[]string{"nsinit", "--listen", "/run/a.sock", "-g", "--", "sh"}, []string{"--listen", "/run/a.sock", "-g"}},
	} {
		if got := initOptions(c.argv); !slices.Equal(got, c.want) {
			t.Errorf("initOptions(%q) = %q, want %q", c.argv, got, c.want)
		}
	}
}
