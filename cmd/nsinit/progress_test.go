package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// runNsinit runs the binary with its output in a file (testutil.RunCmd:
// restored tasks may inherit it) and returns it and the exit status.
func runNsinit(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := testutil.Run(t, testutil.Binary(t), args...)
	if testutil.ExitCode(err) < 0 {
		t.Fatalf("nsinit %q: %v", args, err)
	}
	return out, testutil.ExitCode(err)
}

// TestProgressAndJSONLog: off a terminal, dump and restore are quiet
// unless --progress asks (then one line a step, with done/total); -v with
// --log-format json and -o writes JSON records to the file, errors still
// reach stderr as text.
func TestProgressAndJSONLog(t *testing.T) {
	testutil.Require(t, testutil.Root)
	sh := exec.Command("/bin/sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait")
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Kill(-sh.Process.Pid, unix.SIGKILL); sh.Wait() })
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("tree: %q %v", l, err)
	}
	root := strconv.Itoa(sh.Process.Pid)
	img := t.TempDir()

	// Quiet without --progress (stderr is a file here).
	if e, code := runNsinit(t, "dump", "-t", root, "-D", img, "--unchecked"); code != 0 || e != "" {
		t.Fatalf("dump: status %d, output %q, want 0 and nothing", code, e)
	}
	e, code := runNsinit(t, "dump", "-t", root, "-D", img, "--unchecked", "--progress", "-v", "--log-format", "json", "-o", "dump.log")
	if code != 0 {
		t.Fatalf("dump --progress: status %d\n%s", code, e)
	}
	for _, want := range []string{"nsinit dump: found 3/3 tasks", "nsinit dump: froze 3/3 tasks", "nsinit dump: read 3/3 tasks"} {
		if !strings.Contains(e, want) {
			t.Errorf("dump progress lacks %q:\n%s", want, e)
		}
	}
	b, err := os.ReadFile(filepath.Join(img, "dump.log"))
	if err != nil {
		t.Fatal(err)
	}
	wrote := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec struct{ Level, Msg, Cmd string }
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if rec.Cmd != "nsinit dump" || rec.Level == "" {
			t.Errorf("log record %q: no level or command", line)
		}
		wrote = wrote || strings.HasPrefix(rec.Msg, "wrote 3 tasks")
	}
	if !wrote {
		t.Errorf("no 'wrote 3 tasks' record in:\n%s", b)
	}

	// A restore beside the original: into a new pid namespace.
	e, code = runNsinit(t, "restore", "-D", img, "--into-new-pidns", "-d", "--progress")
	if code != 0 {
		t.Fatalf("restore: status %d\n%s", code, e)
	}
	// The root's pid is printed last, after the progress.
	lines := strings.Split(strings.TrimSpace(e), "\n")
	copyRoot, _ := strconv.Atoi(lines[len(lines)-1])
	if st, err := procfs.New("").Status(copyRoot); err == nil {
		defer unix.Kill(st.PPid, unix.SIGKILL) // the copy's PID 1 takes its namespace with it
	}
	if !strings.Contains(e, "nsinit restore: created 3/3 tasks") {
		t.Errorf("restore progress lacks the final count:\n%s", e)
	}

	if e, code := runNsinit(t, "dump", "-t", root, "-D", img, "--log-format", "yaml"); code != exitUsage || !strings.Contains(e, "yaml") {
		t.Errorf("--log-format yaml: status %d, stderr %q, want %d", code, e, exitUsage)
	}
}
