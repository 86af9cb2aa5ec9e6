package restorer

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/dump"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// capTreeScript builds a real tree whose tasks have the capability states
// setpriv(1) gives them; every task ends as `busybox sleep N`, N = 1000 +
// its index below:
//
//	0 the root, root with the full set
//	1 uid 1000, net_raw inheritable and ambient: permitted = effective = net_raw
//	2 uid 1001 with groups, chown inheritable only: nothing permitted
//	3 root with sys_admin and net_admin out of its bounding set
//	4 root with chown and kill inheritable
//	5 in a child user namespace (root mapped to root) with pid_for_children
//	  a new pid namespace (unshare -p without -f, as TestE2EUnshareWithoutFork)
//	6 PID 1 of that namespace, its bounding set without net_admin, kill
//	  inheritable: the sets are relative to the child user namespace
//
// and two zombies (the root never reaps: it execs sleep), which do not exec
// when restored and get their sets as they are:
//
//	exit 3: uid 1002, kill inheritable
//	exit 4: root without sys_admin in its bounding set
const capTreeScript = `S=/usr/bin/setpriv B=/bin/busybox
$S --reuid 1000 --regid 1000 --clear-groups --inh-caps +net_raw --ambient-caps +net_raw $B sleep 1001 &
$S --reuid 1001 --regid 1001 --groups 5,6 --inh-caps +chown $B sleep 1002 &
$S --bounding-set -sys_admin,-net_admin $B sleep 1003 &
$S --inh-caps +chown,+kill $B sleep 1004 &
unshare -U -r -p $B sh -c "$S --bounding-set -net_admin --inh-caps +kill $B sleep 1006 & exec $B sleep 1005" &
$S --reuid 1002 --regid 1002 --clear-groups --inh-caps +kill $B sh -c 'exit 3' &
$S --bounding-set -sys_admin $B sh -c 'exit 4' &
exec $B sleep 1000`

const capTreeSize = 9

// startCapTree starts the tree and waits until every task has exec'd its
// sleep; the cleanup kills and reaps what is left of it.
func startCapTree(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/busybox", "sh", "-c", capTreeScript)
	out, err := os.Create(t.TempDir() + "/out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	startScriptTree(t, cmd)
	root := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; {
		live, err := dump.ReadLive(root, "")
		if err == nil && len(live.Tasks) == capTreeSize && allSleeping(live) {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("the tree did not form: %v\n%s", err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

func allSleeping(tr *pstree.Tree) bool {
	for _, tk := range tr.Tasks {
		if tk.State != pstree.Zombie && (len(tk.Argv) != 3 || tk.Argv[1] != "sleep") {
			return false
		}
	}
	return true
}

// capsByTask is the image's credentials by sleep argument, "exit N" for a
// zombie.
func capsByTask(tr *pstree.Tree) map[string]pstree.Creds {
	m := map[string]pstree.Creds{}
	for _, tk := range tr.Tasks {
		if tk.State == pstree.Zombie {
			m[fmt.Sprintf("exit %d", tk.ExitStatus>>8)] = tk.Creds
		} else {
			m[tk.Argv[2]] = tk.Creds
		}
	}
	return m
}

// TestE2ECapabilities: a real tree with setpriv-made capability states
// is dumped and killed, restored with both payloads in both placements,
// and `nsinit check` finds no difference; independently, /proc/PID/status
// of every restored task shows the image's ids and five sets.
func TestE2ECapabilities(t *testing.T) {
	needRoot(t)
	if _, err := os.Stat("/usr/bin/setpriv"); err != nil {
		t.Skip("needs setpriv from util-linux to build the tree")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare from util-linux to build the tree")
	}
	testutil.Binary(t)
	for _, payload := range []string{"exec", "stopped"} {
		for _, placement := range []string{"set_tid", "ns_last_pid"} {
			t.Run(payload+"/"+placement, func(t *testing.T) {
				// The host is shared: another process can take a pid of the
				// killed tree before the restore does. Then the restore fails
				// cleanly and a fresh tree (new pids) is tried, at most 3 times.
				for attempt := 1; !capRoundTrip(t, payload, placement, attempt == 3); attempt++ {
				}
			})
		}
	}
}

// capRoundTrip builds the tree, dumps and kills it, restores and checks
// it. It returns false when the restore failed because a pid was taken
// and last is false.
func capRoundTrip(t *testing.T, payload, placement string, last bool) bool {
	t.Helper()
	cmd := startCapTree(t)
	rootS := strconv.Itoa(cmd.Process.Pid)
	tr, img := dumpKilled(t, cmd, "--unchecked")
	checkCapImage(t, tr)
	waitGone(t, tr)
	if out, err := nsinit(t, "restore", "-D", img, "-d", "--placement", placement, "--payload", payload); err != nil {
		if !last && strings.Contains(out, "pid already taken") {
			t.Logf("retrying with a new tree: %s", out)
			return false
		}
		t.Fatalf("restore: %v\n%s", err, out)
	}
	t.Cleanup(func() { killTree(t, tr, &Restored{}) })
	if out, err := nsinit(t, "check", "-t", rootS, "-D", img); err != nil {
		// a parked task is stopped where the image has it live
		var left []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if !(payload == "stopped" && strings.HasSuffix(l, ": state: image live, live stopped")) {
				left = append(left, l)
			}
		}
		if len(left) > 0 {
			t.Errorf("check: %v\n%s", err, strings.Join(left, "\n"))
		}
	}
	for _, tk := range tr.Tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tk.PID()))
		if err != nil {
			t.Errorf("task %v: %v", tk.PIDs, err)
			continue
		}
		s, c := string(b), tk.Creds
		for _, f := range []struct {
			name string
			want uint64
		}{{"CapInh", c.CapInh}, {"CapPrm", c.CapPrm}, {"CapEff", c.CapEff}, {"CapBnd", c.CapBnd}, {"CapAmb", c.CapAmb}} {
			if got := procfs.StatusField([]byte(s), f.name); got != fmt.Sprintf("%016x", f.want) {
				t.Errorf("task %v (%v): %s %s, image %016x", tk.PIDs, tk.Argv, f.name, got, f.want)
			}
		}
		for f, want := range map[string]string{
			"Uid":    fmt.Sprintf("%d %d %d %d", c.UID, c.EUID, c.SUID, c.FSUID),
			"Gid":    fmt.Sprintf("%d %d %d %d", c.GID, c.EGID, c.SGID, c.FSGID),
			"Groups": joinU32(c.Groups),
		} {
			if got := strings.Join(strings.Fields(procfs.StatusField([]byte(s), f)), " "); got != want {
				t.Errorf("task %v: %s %q, image %q", tk.PIDs, f, got, want)
			}
		}
	}
	return true
}

// checkCapImage makes sure the dump has the states the test is about, so
// that a restore matching it proves something.
func checkCapImage(t *testing.T, tr *pstree.Tree) {
	t.Helper()
	const netRaw, chown, kill, sysAdmin, netAdmin = 1 << 13, 1 << 0, 1 << 5, 1 << 21, 1 << 12
	if len(tr.Tasks) != capTreeSize {
		t.Fatalf("dump has %d tasks, want %d", len(tr.Tasks), capTreeSize)
	}
	m := capsByTask(tr)
	var bad []string
	expect := func(ok bool, what string) {
		if !ok {
			bad = append(bad, what)
		}
	}
	c := m["1001"]
	expect(c.UID == 1000 && c.CapAmb == netRaw && c.CapInh == netRaw && c.CapPrm == netRaw && c.CapEff == netRaw, "1001: uid 1000, net_raw inh/amb/prm/eff")
	c = m["1002"]
	expect(c.UID == 1001 && slices.Equal(c.Groups, []uint32{5, 6}) && c.CapInh == chown && c.CapPrm == 0, "1002: uid 1001, groups 5 6, chown inh only")
	c = m["1003"]
	expect(c.UID == 0 && c.CapBnd&(sysAdmin|netAdmin) == 0 && c.CapBnd != 0 && c.CapPrm == c.CapBnd, "1003: bounding set without sys_admin, net_admin")
	c = m["1004"]
	expect(c.CapInh == chown|kill && c.CapPrm == m["1000"].CapPrm, "1004: chown, kill inheritable")
	c = m["1006"]
	expect(c.CapInh == kill && c.CapBnd&netAdmin == 0 && c.CapPrm == c.CapBnd|kill, "1006: in a user ns, bounding set without net_admin, kill inheritable")
	c = m["exit 3"]
	expect(c.UID == 1002 && c.CapInh == kill && c.CapPrm == 0 && c.CapEff == 0, "zombie exit 3: uid 1002, kill inheritable")
	c = m["exit 4"]
	expect(c.UID == 0 && c.CapBnd&sysAdmin == 0 && c.CapPrm == c.CapBnd && c.CapEff == c.CapBnd, "zombie exit 4: bounding set without sys_admin")
	if len(bad) > 0 {
		t.Fatalf("the dump does not have the states the tree was built with: %s\n%+v", strings.Join(bad, "; "), m)
	}
}

// TestCapsOf: what the builder is given, and the images refused, without
// root.
func TestCapsOf(t *testing.T) {
	const last = 40
	full := uint64(1)<<(last+1) - 1
	mk := func(st pstree.TaskState, c pstree.Creds) *Plan {
		return &Plan{Tree: &pstree.Tree{Tasks: []pstree.Task{{PIDs: []int{10}, State: st, Creds: c}}}}
	}
	// hand-written: nothing recorded, nothing set
	if c, err := capsOf(mk(pstree.Live, pstree.Creds{UID: 1000}), 0, last); err != nil || c.ok {
		t.Errorf("all-zero sets: %+v %v, want not ok", c, err)
	}
	amb := pstree.Creds{UID: 1000, CapInh: 1 << 13, CapPrm: 1 << 13, CapEff: 1 << 13, CapAmb: 1 << 13, CapBnd: full | 1<<63}
	c, err := capsOf(mk(pstree.Live, amb), 0, last)
	if err != nil || !c.ok || !c.keep || c.exact || c.bnd != full || c.inh != 1<<13 || c.amb != 1<<13 {
		t.Errorf("ambient task: %+v %v (bits past cap_last_cap dropped from the bounding set, keepcaps)", c, err)
	}
	c, err = capsOf(mk(pstree.Zombie, pstree.Creds{CapPrm: 7, CapEff: 3, CapBnd: full}), 0, last)
	if err != nil || !c.exact || !c.keep || c.prm != 7 || c.eff != 3 {
		t.Errorf("zombie: %+v %v, want exact permitted 7 effective 3", c, err)
	}
	for name, x := range map[string]struct {
		cr   pstree.Creds
		want error
	}{
		"inheritable past cap_last_cap": {pstree.Creds{CapInh: 1 << 50, CapBnd: full}, ErrUnsupported},
	} {
		if _, err := capsOf(mk(pstree.Live, x.cr), 0, last); !errors.Is(err, x.want) {
			t.Errorf("%s: %v, want %v", name, err, x.want)
		}
	}
}
