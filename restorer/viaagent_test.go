package restorer

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestE2ERestoreThroughAgent restores into a pid namespace the restorer is
// not in, through the nsinit agent that is its PID 1 (`nsinit --listen`):
// a tree inside the agent's namespace (a new session with a zombie, a
// nested pid namespace with its own nsinit) is dumped from inside and
// killed; `nsinit restore --agent SOCKET` from the host has the agent
// restore it; the /proc view (NSpid, PPid, NSpgid, NSsid, State of every
// task, read here) must be as before, and `nsinit check` run inside must
// find nothing. A second restore of the same image fails on the taken pids
// and leaves nothing behind.
func TestE2ERestoreThroughAgent(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	for _, tool := range []string{"unshare", "nsenter", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, busybox-static)", tool)
		}
	}
	for _, placement := range []string{"set_tid", "ns_last_pid"} {
		t.Run(placement, func(t *testing.T) { restoreThroughAgent(t, bin, placement, false) })
	}
	// A rootless container: uid 1000 starts the agent in a user namespace
	// of its own (root inside is uid 1000 outside) and, as a plain uid 1000
	// process with no capability over the container's pid namespace and no
	// process in it, has the agent restore there.
	t.Run("rootless", func(t *testing.T) { restoreThroughAgent(t, bin, "set_tid", true) })
}

func restoreThroughAgent(t *testing.T, bin, placement string, rootless bool) {
	dir := t.TempDir()
	var asUser, enterUser []string // the container's user, and how to enter it
	if rootless {
		if _, err := exec.LookPath("setpriv"); err != nil {
			t.Skip("needs setpriv (util-linux)")
		}
		var err error
		if dir, err = os.MkdirTemp("", "nsinit-rootless"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chown(dir, 1000, 1000); err != nil {
			t.Fatal(err)
		}
		asUser = []string{"setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups"}
		enterUser = []string{"-U"}
	}
	sock, img := dir+"/agent.sock", dir+"/img"
	tree := fmt.Sprintf(`busybox setsid busybox sh -c 'busybox sleep 1001 & (exit 7) & `+
		`busybox unshare -p busybox sh -c "%s -- busybox sleep 1003 & exec busybox sleep 1004" & exec busybox sleep 1002'`, bin)
	// The subshell leaves the tree's root an orphan of the agent, which
	// reaps it when the dump kills it.
	unshare := []string{"unshare", "-p", "-f", "--mount-proc"}
	if rootless {
		unshare = append(asUser, "unshare", "-U", "-r", "-p", "-f", "--mount-proc")
	}
	cmd := exec.Command(unshare[0], append(unshare[1:], bin, "--listen", sock, "--",
		"busybox", "sh", "-c", "( "+tree+" & ) ; exec busybox sleep 1000")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var agentPID int
	t.Cleanup(func() {
		if agentPID > 0 {
			unix.Kill(agentPID, unix.SIGKILL) // PID 1: its namespace goes with it
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	root := 0                // host pid of the tree's root
	settled := func() bool { // every task there, none caught running
		v := procView(agentPID)
		return len(v) == 8 && !slices.ContainsFunc(v, func(l string) bool { return strings.HasSuffix(l, "| R") })
	}
	for i := 0; i < 200 && (agentPID == 0 || root == 0 || !settled()); i++ {
		time.Sleep(20 * time.Millisecond)
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		agentPID, _ = strconv.Atoi(strings.TrimSpace(string(kids)))
		root = findArgv(agentPID, "busybox sleep 1002")
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("restore socket: %v %v, want a socket with mode 0600", fi.Mode(), err)
	}
	before := procView(root)
	if len(before) != 6 {
		t.Fatalf("the tree did not come up: %q", before)
	}
	inner := func(host int) string { // its pid in the agent's namespace
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", host))
		f := strings.Fields(procfs.StatusField(b, "NSpid"))
		return f[len(f)-1]
	}
	inside := func(args ...string) (string, error) {
		enter := append(append([]string{"-t", strconv.Itoa(agentPID)}, enterUser...), "-p", "-m", bin)
		out, err := exec.Command("nsenter", append(enter, args...)...).CombinedOutput()
		return string(out), err
	}
	// Inside a pid namespace the eBPF guard cannot name level-0 pids.
	if out, err := inside("dump", "--unchecked", "-t", inner(root), "-D", img, "--kill"); err != nil {
		t.Fatalf("dump inside the agent's namespace: %v\n%s", err, out)
	}
	for i := 0; i < 200 && findArgv(agentPID, "busybox sleep 1002") != 0; i++ {
		time.Sleep(10 * time.Millisecond) // the agent reaps the killed root
	}
	if rootless { // the client cannot restore there by itself
		direct := append(asUser, bin, "restore", "-D", img)
		if out, err := exec.Command(direct[0], direct[1:]...).CombinedOutput(); err == nil || !strings.Contains(string(out), "needs CAP_") {
			t.Errorf("uid 1000 restoring by itself: %v\n%s", err, out)
		}
	}
	client := append(asUser, bin, "restore", "--agent", sock, "-D", img, "--placement", placement)
	out, err := exec.Command(client[0], client[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("restore through the agent: %v\n%s", err, out)
	}
	root = findArgv(agentPID, "busybox sleep 1002")
	if got := strings.TrimSpace(string(out)); root == 0 || got != inner(root) {
		t.Fatalf("restore printed %q; the restored root is host pid %d", got, root)
	}
	// The agent runs `nsinit restore -d`: the tree gets /dev/null, not the
	// file where the agent collects the restorer's messages.
	if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/2", root)); err != nil || link != os.DevNull {
		t.Errorf("restored root's stderr is %q (%v), want %s", link, err, os.DevNull)
	}
	after := procView(root)
	for i := 0; i < 100 && slices.ContainsFunc(after, func(l string) bool { return strings.HasSuffix(l, "| R") }); i++ {
		time.Sleep(10 * time.Millisecond) // a restored program still starting
		after = procView(root)
	}
	if !slices.Equal(before, after) {
		t.Errorf("/proc before the dump and after the restore differ:\n%s\n---\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if out, err := inside("check", "-t", inner(root), "-D", img); err != nil {
		t.Errorf("check inside: %v\n%s", err, out)
	}
	n := len(procView(agentPID))
	out, err = exec.Command(client[0], client[1:]...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already taken") {
		t.Errorf("second restore of the same image: %v\n%s", err, out)
	}
	time.Sleep(100 * time.Millisecond) // the failed restorer is reaped by the agent
	if m := len(procView(agentPID)); m != n {
		t.Errorf("the failed restore left %d processes behind in the agent's namespace", m-n)
	}
}

// procView is every process of the subtree at host pid root as the agent's
// namespace (level 1) and those below it see it, one sorted line each:
// NSpid, PPid, NSpgid, NSsid without their host level, and the state
// letter. It reads /proc directly, not through nsinit.
func procView(root int) []string {
	inner := func(v string) string { // drop the host's entry
		_, rest, _ := strings.Cut(v, " ")
		return rest
	}
	var out []string
	for _, p := range subtree(root) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		s := string(b)
		pb, _ := os.ReadFile("/proc/" + procfs.StatusField([]byte(s), "PPid") + "/status")
		parent, _, _ := strings.Cut(inner(procfs.StatusField(pb, "NSpid")), " ")
		state, _, _ := strings.Cut(procfs.StatusField([]byte(s), "State"), " ")
		out = append(out, strings.Join([]string{inner(procfs.StatusField([]byte(s), "NSpid")), parent,
			inner(procfs.StatusField([]byte(s), "NSpgid")), inner(procfs.StatusField([]byte(s), "NSsid")), state}, " | "))
	}
	slices.Sort(out)
	return out
}

// findArgv is the host pid of the process in the subtree at root whose
// command line is argv (space-separated), 0 if none.
func findArgv(root int, argv string) int {
	for _, p := range subtree(root) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ") == argv {
			return p
		}
	}
	return 0
}

// subtree lists root and its descendants through the children files.
func subtree(root int) []int {
	if root <= 0 {
		return nil
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, tk := range tasks {
			kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], tk.Name()))
			for _, k := range strings.Fields(string(kids)) {
				c, _ := strconv.Atoi(k)
				out = append(out, c)
			}
		}
	}
	return out
}
