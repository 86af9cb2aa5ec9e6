package restorer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// TestE2ERuncMigrateThroughAgent moves a tree from one runc container to a
// new one, as a container migration would (README, "Migrating a
// container"): both containers run nsinit as their init with `--listen`
// on a socket in a directory bind-mounted from the host. In the first, a
// session whose leader is an orphan of the init, with a zombie and a
// nested pid namespace with its own nsinit, is dumped from inside (`runc
// exec nsinit dump --unchecked --kill`); `nsinit restore --agent` from the
// host then has the second container's init restore the image there. Every
// task must have the same pids, parent, group, session and state in the
// second container as in the first (read through /proc here, not through
// nsinit), and `nsinit check` run inside must find nothing.
func TestE2ERuncMigrateThroughAgent(t *testing.T) {
	needRoot(t)
	// The loop moves the tree's pids above those of the init's runtime
	// threads, which a fresh container's init holds as well.
	from := agentContainer(t, `i=0; while [ $i -lt 100 ]; do /bin/busybox true; i=$((i+1)); done; `+
		`( /bin/busybox setsid /bin/busybox sh -c '/bin/busybox sleep 1001 & (exit 7) & `+
		`/bin/busybox unshare -p -f /bin/nsinit -- /bin/busybox sleep 1003 & exec /bin/busybox sleep 1002' & ) ; `+
		`exec /bin/busybox sleep 1000`)
	var root int
	settled := func() bool { // every task there, none caught running
		v := procView(root)
		return len(v) == 6 && !slices.ContainsFunc(v, func(l string) bool { return strings.HasSuffix(l, "| R") })
	}
	for i := 0; root == 0 || !settled(); i++ {
		if i == 30000 {
			t.Fatalf("the tree never came up in the first container: %q", procView(from.init))
		}
		time.Sleep(time.Millisecond)
		root = findArgv(from.init, "/bin/busybox sleep 1002")
	}
	before := procView(root)
	inner := before[0][:strings.IndexByte(before[0], ' ')] // the root's pid in the container (the sort puts it first)
	if out, err := from.exec("/bin/nsinit", "dump", "--unchecked", "-t", inner, "-D", "/run/agent/img", "--kill"); err != nil {
		t.Fatalf("dump inside the first container: %v\n%s", err, out)
	}
	to := agentContainer(t, "exec /bin/busybox sleep 1000")
	out, err := nsinit(t, "restore", "--agent", filepath.Join(to.dir, "sock"), "-D", filepath.Join(from.dir, "img"))
	if err != nil {
		t.Fatalf("restore through the second container's agent: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(out); got != inner {
		t.Errorf("restore printed %q, want the root's pid %s", got, inner)
	}
	root = findArgv(to.init, "/bin/busybox sleep 1002")
	after := procView(root)
	for i := 0; i < 1000 && slices.ContainsFunc(after, func(l string) bool { return strings.HasSuffix(l, "| R") }); i++ {
		time.Sleep(time.Millisecond) // a restored program still starting
		after = procView(root)
	}
	if !slices.Equal(before, after) {
		t.Errorf("/proc in the first container and in the second differ:\n%s\n---\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	// The image (a dump without --state is pstree.img alone), where check
	// inside the second container reads it.
	copyFile(t, filepath.Join(from.dir, "img", "pstree.img"), filepath.Join(to.dir, "img", "pstree.img"))
	if out, err := to.exec("/bin/nsinit", "check", "-t", inner, "-D", "/run/agent/img"); err != nil {
		t.Errorf("check inside the second container: %v\n%s", err, out)
	}
}

// agentRunc is a running runc container whose init is an nsinit agent.
type agentRunc struct {
	dir  string // the host directory mounted at /run/agent: the socket, images
	init int    // the init's host pid
	exec func(args ...string) (string, error)
}

// agentContainer runs `nsinit --listen /run/agent/sock -- sh -c script` as
// the init of a runc container given what restoring there takes beyond
// runc's default spec: CAP_CHECKPOINT_RESTORE (set_tid), CAP_SYS_ADMIN
// (the nested pid namespace, ns_last_pid), CAP_SYS_PTRACE (the dump's
// freeze) and a writable /proc/sys (ns_last_pid). It returns once the
// socket is there.
func agentContainer(t *testing.T, script string) agentRunc {
	t.Helper()
	c := agentRunc{dir: t.TempDir()}
	bundle, id, runc := runcBundleSpec(t, func(spec map[string]any) {
		caps := spec["process"].(map[string]any)["capabilities"].(map[string]any)
		for _, set := range []string{"bounding", "effective", "permitted"} {
			caps[set] = append(caps[set].([]any), "CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE")
		}
		linux := spec["linux"].(map[string]any)
		linux["readonlyPaths"] = slices.DeleteFunc(linux["readonlyPaths"].([]any), func(p any) bool { return p == "/proc/sys" })
		spec["mounts"] = append(spec["mounts"].([]any), map[string]any{
			"destination": "/run/agent", "type": "bind", "source": c.dir, "options": []any{"rbind"}})
	}, "/bin/nsinit", "--listen", "/run/agent/sock", "--", "/bin/busybox", "sh", "-c", script)
	c.init = runcRun(t, bundle, id, runc)
	c.exec = func(args ...string) (string, error) {
		return testutil.RunCmd(t, runc(append([]string{"exec", id}, args...)...))
	}
	for i := 0; ; i++ {
		if fi, err := os.Stat(filepath.Join(c.dir, "sock")); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return c
		}
		if i == 30000 {
			t.Fatalf("the container's agent never listened")
		}
		time.Sleep(time.Millisecond)
	}
}
