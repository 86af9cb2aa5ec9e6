package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// churnScript is the busy tree of issue #13: three shells across three pid
// levels, each running a program in a loop, like a build or a test runner
// (Debian's dash forks them with vfork). $SH and $TRUE name the shell and
// the program.
const churnScript = `
while :; do $TRUE; done &
unshare -fp $SH -c '
  while :; do $TRUE; done &
  unshare -fp $SH -c "while :; do $TRUE; done"
' &
wait
`

// TestChurnDumpCheck dumps the busy tree with the real command 20 times in
// a row, `nsinit dump --leave-stopped`, and after each one `nsinit check
// --left-stopped` must find the stopped tree identical to the image; the
// tree then runs again until the next dump. At most one dump of the 20 may
// be refused (naming what moved), none may be inconsistent. The tree is in
// no cgroup of its own (the ptrace freeze), then in one (the cgroup
// freeze, 10 times: the freezer the issue was not about).
func TestChurnDumpCheck(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF)
	t.Run("ptrace", func(t *testing.T) { churn(t, "", 20) })
	t.Run("cgroup", func(t *testing.T) {
		cg, err := testutil.NewCgroup(t, "nsinit-churn-test-")
		if err != nil {
			t.Skip(err)
		}
		churn(t, cg.Dir, 10)
	})
}

// churn runs the busy tree (in cgroup directory cg if not "") and dumps
// and checks it n times.
func churn(t *testing.T, cg string, dumps int) {
	bin := testutil.Binary(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	sh, tru := "/bin/sh", "/bin/true"
	for _, p := range []string{sh, tru} {
		if _, err := os.Stat(p); err != nil {
			sh, tru = "/bin/busybox sh", "/bin/busybox true"
		}
	}
	cmd := exec.Command("/bin/sh", "-c", churnScript)
	if strings.HasPrefix(sh, "/bin/busybox") {
		cmd = exec.Command("/bin/busybox", "sh", "-c", churnScript)
	}
	cmd.Env = append(os.Environ(), "SH="+sh, "TRUE="+tru)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cg != "" {
		fd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	t.Cleanup(func() {
		// The tree is one process group (no job control), across its
		// pid namespaces; it may be stopped.
		unix.Kill(-root, unix.SIGKILL)
		cmd.Wait()
	})
	waitForLevels(t, root, 3)

	dir := t.TempDir()
	var refused []string
	first, retried := 0, 0
	start := time.Now()
	for i := range dumps {
		img := filepath.Join(dir, fmt.Sprint(i))
		var stderr bytes.Buffer
		d := exec.Command(bin, "dump", "-v", "-t", fmt.Sprint(root), "-D", img, "--leave-stopped")
		d.Stderr = &stderr
		if err := d.Run(); err != nil {
			msg := strings.TrimSpace(stderr.String())
			if !strings.Contains(msg, "tree kept changing") {
				t.Fatalf("dump %d failed, and not for a race: %v\n%s", i, err, msg)
			}
			refused = append(refused, msg[strings.LastIndex(msg, "\n")+1:])
			continue
		}
		if cg != "" && strings.Contains(stderr.String(), "not using cgroup freeze") {
			t.Errorf("dump %d: the tree has a cgroup of its own, but:\n%s", i, stderr.String())
		}
		if n := strings.Count(stderr.String(), "raced"); n == 0 {
			first++
		} else {
			retried++
			t.Logf("dump %d: %d attempts raced:\n%s", i, n, stderr.String())
		}
		tr, err := imagefile.Read(img)
		if err != nil {
			t.Fatal(err)
		}
		// Left stopped: the cgroup frozen, or (ptrace) every task live
		// in the image in group-stop.
		if cg != "" {
			// A signal to a frozen task (SIGCHLD from a child that
			// finished exiting) takes it out of the freezer's trap
			// for a moment: "frozen 0" until it is back.
			b, _ := os.ReadFile(filepath.Join(cg, "cgroup.freeze"))
			if strings.TrimSpace(string(b)) != "1" {
				t.Errorf("dump %d: cgroup.freeze is %q after --leave-stopped", i, b)
			}
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				b, _ := os.ReadFile(filepath.Join(cg, "cgroup.events"))
				if strings.Contains(string(b), "frozen 1") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("dump %d: cgroup not frozen again: %s", i, b)
				}
			}
		}
		for _, task := range tr.Tasks {
			if task.State != pstree.Live || cg != "" {
				continue
			}
			if st := procState(task.PIDs[0]); st != 'T' {
				t.Errorf("dump %d: pid %d is %c after --leave-stopped, want T", i, task.PIDs[0], st)
			}
		}
		out, err := exec.Command(bin, "check", "--left-stopped", "-t", fmt.Sprint(root), "-D", img).CombinedOutput()
		if err != nil {
			t.Fatalf("dump %d: check: %v: the stopped tree differs from the image:\n%s", i, err, out)
		}
		// Let it run again (it must really have been stopped: the
		// check above read a tree that had not moved).
		if cg != "" {
			if err := os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0); err != nil {
				t.Fatal(err)
			}
		}
		for _, task := range tr.Tasks {
			unix.Kill(task.PIDs[0], unix.SIGCONT)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d dumps + checks in %v: %d succeeded on the first attempt, %d after a retry, %d refused",
		dumps, time.Since(start).Round(time.Millisecond), first, retried, len(refused))
	for _, r := range refused {
		t.Logf("refused: %s", r)
	}
	if len(refused) > 1 {
		t.Errorf("%d of %d dumps refused, want at most 1", len(refused), dumps)
	}
}

// waitForLevels waits until the tree rooted at root has tasks at n pid
// levels (read live: a busy tree may fail a read now and then).
func waitForLevels(t *testing.T, root, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if live, err := ReadLive(root); err == nil {
			levels := map[int]bool{}
			for _, task := range live.Tasks {
				levels[task.Level()] = true
			}
			if len(levels) >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tree of pid %d never reached %d pid levels", root, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procState is the state letter of /proc/PID/stat, 0 if unreadable.
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
