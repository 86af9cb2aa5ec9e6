package dump

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
	"golang.org/x/sys/unix"
)

// usernsRoleEnv makes the re-executed test binary build a level of the
// user namespace tree (dispatched in init, before TestMain).
const usernsRoleEnv = "NSINIT_USERNS_TEST_ROLE"

func init() {
	role := os.Getenv(usernsRoleEnv)
	if role == "" {
		return
	}
	if err := usernsRole(role, os.Getenv("D")); err != nil {
		fmt.Fprintf(os.Stderr, "userns role %s: %v\n", role, err)
		os.Exit(3)
	}
	sleepForever()
}

// usernsRole builds, as pid 1 of P1 in U1 (uid map 0 100000 65536):
//   - a leaf running as uid/gid 1000 of U1;
//   - unshare -U -r -fp: U2, a child of U1 that maps only U1's root
//     (setgroups denied), and in it the init of P2, a leaf running as root
//     of U2.
//
// Each leaf writes the uid it sees inside its user namespace (busybox id)
// to DIR/<name>.uid before it execs sleep. (U2 comes from unshare: Go's
// exec cannot write the maps of a grandchild user namespace here.)
func usernsRole(role, dir string) error {
	if role != "level1" {
		return fmt.Errorf("unknown role")
	}
	script := func(name string) string {
		return `busybox id -u > "$D/` + name + `.tmp" && busybox mv "$D/` + name + `.tmp" "$D/` + name + `.uid" && exec busybox sleep 1000`
	}
	a := exec.Command("/bin/busybox", "sh", "-c", script("a"))
	a.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000, NoSetGroups: true}}
	if err := a.Start(); err != nil {
		return err
	}
	c := exec.Command("unshare", "-U", "-r", "-fp", "/bin/busybox", "sh", "-c", script("c"))
	c.Stderr = os.Stderr
	return c.Start()
}

// rootInside makes a child born in a new user namespace root there: our
// own uid is not in its map, so without it the child would run as the
// overflow uid, without capabilities after exec.
var rootInside = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}

// TestDumpUserNamespaces dumps a tree over two levels of user namespaces,
// each owning a pid namespace, with non-identity maps and tasks running as
// other uids, and checks everything against the kernel.
func TestDumpUserNamespaces(t *testing.T) {
	testutil.Require(t, testutil.Root)
	// The tree runs as uids other than ours: it needs a directory it can
	// reach, write and exec the test binary from (t.TempDir's parent is
	// private).
	dir := testutil.SharedTempDir(t, "nsinit-userns-test-", 0o777)
	self := filepath.Join(dir, "dump.test")
	if err := copyFile(self); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), usernsRoleEnv+"=level1", "D="+dir)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:                     true,
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappingsEnableSetgroups: true,
		Credential:                 rootInside,
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tt := &testTree{cmd: cmd, root: cmd.Process.Pid, dir: dir}
	t.Cleanup(func() { tt.cleanup(t) })
	for _, f := range []string{"a.uid", "c.uid"} {
		waitFile(t, filepath.Join(dir, f))
	}
	var tr *pstree.Tree
	var err error
	deadline := time.Now().Add(20 * time.Second)
	for {
		tr, err = Dump(tt.root, Options{})
		if err == nil && len(tr.Tasks) == 4 && strings.HasSuffix(tr.Tasks[3].Exe, "busybox") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree never reached 4 tasks: %v %v", err, tr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := pstree.Validate(tr); err != nil {
		t.Fatal(err)
	}
	compareWithProc(t, tr)

	// Tasks in order: P1 init, leaf a (uid 1000 of U1), unshare (in U2,
	// P1), leaf c (init of P2, root of U2).
	init1, a, unshare, c := &tr.Tasks[0], &tr.Tasks[1], &tr.Tasks[2], &tr.Tasks[3]
	init2 := c
	if unshare.PPID != init1.PID() || c.PPID != unshare.PID() || a.PPID != init1.PID() || c.InnerPID() != 1 {
		t.Fatalf("unexpected tree shape: %v", summary(tr))
	}
	p1, p2 := tr.Namespace(init1.NS[pstree.PidNS]), tr.Namespace(init2.NS[pstree.PidNS])
	u1, u2 := tr.Namespace(init1.NS[pstree.UserNS]), tr.Namespace(init2.NS[pstree.UserNS])
	host := tr.Namespace(u1.Parent)
	if host == nil || host.Kind != pstree.UserNS || !host.Ambient || host.Parent != 0 {
		t.Fatalf("U1's parent should be our own user namespace: %+v", host)
	}
	if p1.Level != 1 || p2.Level != 2 || p2.Parent != p1.ID {
		t.Errorf("pid namespaces: P1 level %d, P2 level %d parent %d", p1.Level, p2.Level, p2.Parent)
	}
	if p1.Owner != u1.ID || p2.Owner != u2.ID || u2.Parent != u1.ID || u1.Owner != host.ID || u2.Owner != u1.ID {
		t.Errorf("ownership: P1 owner %d (U1 %d), P2 owner %d (U2 %d), U2 parent %d, owners %d %d",
			p1.Owner, u1.ID, p2.Owner, u2.ID, u2.Parent, u1.Owner, u2.Owner)
	}
	// Every other namespace of P1's init (net, uts, ...) was inherited
	// from us: owned by our user namespace, ambient.
	for _, k := range []pstree.NSKind{pstree.NetNS, pstree.UTSNS, pstree.IPCNS, pstree.MntNS} {
		ns := tr.Namespace(init1.NS[k])
		if ns.Owner != host.ID || !ns.Ambient {
			t.Errorf("%v namespace: owner %d ambient %v, want owner %d ambient", k, ns.Owner, ns.Ambient, host.ID)
		}
	}
	for _, u := range []*pstree.Namespace{u1, u2} {
		if u.Ambient {
			t.Errorf("user namespace %d marked ambient", u.ID)
		}
	}
	// Maps as seen from the dumper; the kernel's files are the reference.
	for _, x := range []struct {
		ns   *pstree.Namespace
		pid  int
		want []pstree.IDMapEntry
		sg   bool
	}{
		{u1, init1.PID(), []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 65536}}, true},
		{u2, init2.PID(), []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 1}}, false},
	} {
		if !reflect.DeepEqual(x.ns.UIDMap, x.want) || !reflect.DeepEqual(x.ns.GIDMap, x.want) {
			t.Errorf("user namespace %d: maps %v %v, want %v", x.ns.ID, x.ns.UIDMap, x.ns.GIDMap, x.want)
		}
		if got := readMapFile(t, x.pid, "uid_map"); !reflect.DeepEqual(got, x.want) {
			t.Errorf("pid %d uid_map %v, test expected %v", x.pid, got, x.want)
		}
		if x.ns.SetgroupsAllowed != x.sg {
			t.Errorf("user namespace %d: setgroups allowed %v, want %v", x.ns.ID, x.ns.SetgroupsAllowed, x.sg)
		}
	}
	// NS_GET_OWNER_UID answers in the caller's user namespace: U2 was
	// created by root of U1, which is uid 100000 here.
	if u1.OwnerUID != 0 || u2.OwnerUID != 100000 {
		t.Errorf("owner uids: U1 %d (want 0), U2 %d (want 100000)", u1.OwnerUID, u2.OwnerUID)
	}
	// Credentials: as seen by the dumper, and mapped into the task's own
	// user namespace they give what the task itself saw.
	for _, x := range []struct {
		task    *pstree.Task
		user    *pstree.Namespace
		outside uint32
		file    string
	}{{a, u1, 101000, "a.uid"}, {c, u2, 100000, "c.uid"}} {
		cr := x.task.Creds
		if cr.UID != x.outside || cr.EUID != x.outside || cr.GID != x.outside || cr.FSGID != x.outside {
			t.Errorf("pid %d: creds %+v, want uid/gid %d", x.task.PID(), cr, x.outside)
		}
		if x.task.NS[pstree.UserNS] != x.user.ID {
			t.Errorf("pid %d: user namespace %d, want %d", x.task.PID(), x.task.NS[pstree.UserNS], x.user.ID)
		}
		b, err := os.ReadFile(filepath.Join(dir, x.file))
		if err != nil {
			t.Fatal(err)
		}
		inside, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if got, ok := x.user.MapUID(cr.UID); !ok || int(got) != inside {
			t.Errorf("pid %d: uid %d maps to %d (%v) in its user namespace, the task saw %d", x.task.PID(), cr.UID, got, ok, inside)
		}
		if got, ok := x.user.MapGID(cr.GID); !ok || int(got) != inside {
			t.Errorf("pid %d: gid %d maps to %d (%v)", x.task.PID(), cr.GID, got, ok)
		}
	}
	if _, ok := u2.MapUID(101000); ok {
		t.Error("uid 1000 of U1 must be unmapped in U2")
	}
	if unshare.NS[pstree.UserNS] != u2.ID || unshare.NS[pstree.PidNS] != p1.ID || unshare.NS[pstree.PidForChildrenNS] != p2.ID {
		t.Errorf("unshare: user %d pid %d pid_for_children %d", unshare.NS[pstree.UserNS], unshare.NS[pstree.PidNS], unshare.NS[pstree.PidForChildrenNS])
	}
}

// copyFile copies the running executable to dst, executable by all.
func copyFile(dst string) error {
	src, err := os.Executable()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readMapFile(t *testing.T, pid int, name string) []pstree.IDMapEntry {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	var out []pstree.IDMapEntry
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e pstree.IDMapEntry
		if _, err := fmt.Sscan(line, &e.Inside, &e.Outside, &e.Count); err != nil {
			t.Fatalf("%s of %d: %q: %v", name, pid, line, err)
		}
		out = append(out, e)
	}
	return out
}

// TestDumpUserNamespaceWithoutMember dumps a task of U2 whose parent U1
// has no task in it (unshare -U, maps written, then unshare -U again by
// the same process): U1's maps and setgroups come from a joiner
// (memberlessMaps, docs/kernel.md F8.7), and the joiner is reaped.
func TestDumpUserNamespaceWithoutMember(t *testing.T) {
	testutil.Require(t, testutil.Root)
	ready, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer ready.Close()
	hold, in, err := os.Pipe() // the task's stdin: it reads until we go
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("unshare", "-U", "-r", "/bin/busybox", "sh", "-c", "echo ready; read x")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = hold, w, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:                     true,
		Cloneflags:                 syscall.CLONE_NEWUSER,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 200000, Size: 1000}},
		GidMappingsEnableSetgroups: true,
		Credential:                 rootInside,
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hold.Close()
	w.Close()
	tt := &testTree{cmd: cmd, root: cmd.Process.Pid}
	t.Cleanup(func() { tt.cleanup(t) })
	if n, err := ready.Read(make([]byte, 6)); n != 6 || err != nil {
		t.Fatalf("the task never said it was ready: %d bytes, %v", n, err)
	}
	tr, err := Dump(tt.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pstree.Validate(tr); err != nil {
		t.Fatal(err)
	}
	if len(tr.Tasks) != 1 {
		t.Fatalf("want one task: %v", summary(tr))
	}
	u2 := tr.Namespace(tr.Tasks[0].NS[pstree.UserNS])
	u1 := tr.Namespace(u2.Parent)
	if u1 == nil || u1.Ambient || u1.Parent == 0 || !tr.Namespace(u1.Parent).Ambient {
		t.Fatalf("U2's parent should be a user namespace below ours: %+v", u1)
	}
	for _, x := range []struct {
		ns       *pstree.Namespace
		uid, gid []pstree.IDMapEntry
		sg       bool
	}{
		{u1, []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 65536}}, []pstree.IDMapEntry{{Inside: 0, Outside: 200000, Count: 1000}}, true},
		{u2, []pstree.IDMapEntry{{Inside: 0, Outside: 100000, Count: 1}}, []pstree.IDMapEntry{{Inside: 0, Outside: 200000, Count: 1}}, false},
	} {
		if !reflect.DeepEqual(x.ns.UIDMap, x.uid) || !reflect.DeepEqual(x.ns.GIDMap, x.gid) || x.ns.SetgroupsAllowed != x.sg {
			t.Errorf("user namespace %d: maps %v %v setgroups %v, want %v %v %v",
				x.ns.ID, x.ns.UIDMap, x.ns.GIDMap, x.ns.SetgroupsAllowed, x.uid, x.gid, x.sg)
		}
	}
	// The joiner is gone: our only child left is the task (still alive).
	if pid, err := unix.Wait4(-1, nil, unix.WNOHANG|unix.WALL, nil); pid != 0 || err != nil {
		t.Errorf("a child of ours was left to reap: pid %d, %v", pid, err)
	}
}
