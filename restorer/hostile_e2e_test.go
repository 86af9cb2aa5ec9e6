package restorer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
)

// TestE2EHostileImages goes through the built binary: `nsinit show`,
// `nsinit restore --dry-run` and a real `nsinit restore` refuse each
// hostile pstree.img with the reason and the bad image's status, return
// (a FIFO or /dev/zero made
// them block), and fail while reading or planning, before Execute, so
// nothing is created; the image directory is left as it was.
func TestE2EHostileImages(t *testing.T) {
	needRoot(t)
	seed := func(name string) func(p string) error {
		return func(p string) error { return os.WriteFile(p, decodeSeed(t, name), 0o600) }
	}
	cases := []struct {
		name string
		make func(p string) error
		want string
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "not a regular file"},
		{"symlink to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }, "not a regular file: a symbolic link"},
		{"dangling user namespace", seed("dangling-userns"), "parent 12 missing"},
		{"user namespace cycle", seed("userns-cycle"), "parent chain has a cycle"},
		{"NUL in argv", seed("nul-argv"), "argv[1]: contains a NUL byte"},
		{"NUL in exe", seed("nul-exe"), "exe: contains a NUL byte"},
		{"root not /", seed("root-jail"), `root "/srv/jail"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, imagefile.FileName)
			if err := c.make(p); err != nil {
				t.Fatal(err)
			}
			before := entries(t, dir)
			for _, args := range [][]string{{"show", dir}, {"restore", "-D", dir, "--dry-run"}, {"restore", "-D", dir}} {
				out, err := nsinit(t, args...)
				// 201: a bad image (README, "Exit status").
				if code := exitCode(err); code != 201 || !strings.Contains(out, "read image "+p) || !strings.Contains(out, c.want) {
					t.Errorf("nsinit %s: exit %d, output:\n%s\nwant exit 201, naming %s and %q", strings.Join(args, " "), code, out, p, c.want)
				}
			}
			if after := entries(t, dir); !slices.Equal(before, after) {
				t.Errorf("image directory changed: %v, was %v", after, before)
			}
		})
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func exitCode(err error) int { return testutil.ExitCode(err) }
