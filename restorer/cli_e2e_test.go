package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// TestE2ECRIUSpellings restores and dumps a real tree through the built
// binary with CRIU's spellings of the options: --images-dir,
// --restore-detached, --tree, -R, -o (relative to the image directory, as
// with CRIU) and -v levels.
func TestE2ECRIUSpellings(t *testing.T) {
	needRoot(t)
	testutil.Binary(t)
	tr := place(t, sleepers(f43()))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	out, err := nsinit(t, "restore", "--images-dir", src, "--restore-detached", "-v", "-o", "restore.log")
	root := strconv.Itoa(tr.Tasks[0].PID())
	if err != nil || strings.TrimSpace(out) != root {
		t.Fatalf("restore --restore-detached: %v, printed %q, want %s", err, out, root)
	}
	if b, err := os.ReadFile(filepath.Join(src, "restore.log")); err != nil || !strings.Contains(string(b), "root pid "+root) {
		t.Errorf("restore log: %v\n%s", err, b)
	}
	img := t.TempDir()
	if out, err := nsinit(t, "dump", "--tree", root, "--images-dir", img, "-R", "--unchecked", "-o", "dump.log", "-v4"); err != nil {
		t.Fatalf("dump: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(img, "dump.log")); err != nil || !strings.Contains(string(b), "wrote "+strconv.Itoa(len(tr.Tasks))+" tasks") {
		t.Errorf("dump log: %v\n%s", err, b)
	}
	// -R left it running, unchanged.
	if out, err := nsinit(t, "check", "--tree", root, "--images-dir", img); err != nil {
		t.Errorf("check after dump -R: %v\n%s", err, out)
	}
	checkTree(t, tr, PayloadExec)
}

// TestE2EUncheckedDump: dump --unchecked uses no guard even where the eBPF
// guard loads, and the image says so; without it the image is checked.
func TestE2EUncheckedDump(t *testing.T) {
	needRoot(t)
	testutil.Require(t, testutil.BPF)
	tr := place(t, sleepers(f43()))
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	src := t.TempDir()
	if err := imagefile.Write(src, tr); err != nil {
		t.Fatal(err)
	}
	root := strconv.Itoa(tr.Tasks[0].PID())
	if out, err := nsinit(t, "restore", "-D", src, "-d"); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	for _, unchecked := range []bool{true, false} {
		img := t.TempDir()
		args := []string{"dump", "-t", root, "-D", img}
		if unchecked {
			args = append(args, "--unchecked")
		}
		if out, err := nsinit(t, args...); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
		got, err := imagefile.Read(img)
		if err != nil {
			t.Fatal(err)
		}
		if got.Checked == unchecked {
			t.Errorf("%q: image says checked: %v", args, got.Checked)
		}
	}
}

// TestE2EDetachedStdio: `nsinit restore -d` leaves nothing of the tree on
// its caller's pipe - once nsinit has exited the pipe is at end of file,
// as `pid=$(nsinit restore -d ...)` needs - and the restored programs have
// /dev/null as stdin, stdout and stderr; with --inherit-stdio they keep
// nsinit's.
func TestE2EDetachedStdio(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	for _, inherit := range []bool{false, true} {
		t.Run(map[bool]string{false: "null", true: "inherit"}[inherit], func(t *testing.T) {
			tr := place(t, sleepers(f43()))
			t.Cleanup(func() { killTree(t, tr, &Restored{}) })
			dir := t.TempDir()
			if err := imagefile.Write(dir, tr); err != nil {
				t.Fatal(err)
			}
			args := []string{"restore", "-D", dir, "-d"}
			if inherit {
				args = append(args, "--inherit-stdio")
			}
			// The read end does not block: once nsinit is gone and the tree
			// committed, whoever still holds the write end holds it now,
			// so one pass of reads tells end of file from a held pipe.
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(p[0])
			if err := unix.SetNonblock(p[0], true); err != nil {
				t.Fatal(err)
			}
			w := os.NewFile(uintptr(p[1]), "pipe")
			cmd := exec.Command(bin, args...)
			cmd.Stdout, cmd.Stderr = w, w
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			w.Close()
			runErr := cmd.Wait()
			var out []byte
			heldPipe := false
			for buf := make([]byte, 4096); ; {
				n, err := unix.Read(p[0], buf)
				if err == unix.EAGAIN {
					heldPipe = true
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					break
				}
				out = append(out, buf[:n]...)
			}
			if runErr != nil {
				t.Fatalf("restore -d: %v\n%s", runErr, out)
			}
			if root := strconv.Itoa(tr.Tasks[0].PID()); strings.TrimSpace(string(out)) != root {
				t.Errorf("restore -d printed %q, want %s", out, root)
			}
			if heldPipe != inherit {
				t.Errorf("inherit-stdio %v: restored tasks hold nsinit's stdout pipe: %v", inherit, heldPipe)
			}
			for _, tk := range tr.Tasks {
				if tk.State == pstree.Zombie {
					continue
				}
				for fd := 0; fd < 3; fd++ {
					link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", tk.PID(), fd))
					if err != nil {
						t.Errorf("task %d fd %d: %v", tk.PID(), fd, err)
						continue
					}
					isNull := link == os.DevNull
					if inherit && fd > 0 {
						isNull = !strings.HasPrefix(link, "pipe:")
					} else if inherit {
						isNull = false // fd 0 is whatever the test's stdin is
					}
					if isNull == inherit {
						t.Errorf("task %d fd %d -> %s (inherit-stdio %v)", tk.PID(), fd, link, inherit)
					}
				}
			}
		})
	}
}
