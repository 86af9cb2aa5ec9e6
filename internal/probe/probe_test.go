package probe_test

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/probe"
	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestAllWorkAsRoot: as root on the development kernel (6.18 with BTF)
// every probe works, and a second run finds the same (the probes leave
// nothing changed behind, not the cgroup they may make).
func TestAllWorkAsRoot(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF, testutil.SetTID)
	for _, r := range probe.All() {
		if !r.Works {
			t.Errorf("%s: missing (%s), want works as root", r.Name, r.Detail)
		}
	}
	mnt, err := procfs.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(mnt + "/nsinit-probe-*"); len(m) > 0 {
		t.Errorf("probe left cgroups behind: %v", m)
	}
}

// TestSetTID: the set_tid probe is nil (every level can be set) or names
// the one level the kernel takes, nothing else, and leaves no child.
func TestSetTID(t *testing.T) {
	testutil.Require(t, testutil.Root)
	err := probe.SetTID()
	if err != nil && !errors.Is(err, unix.EINVAL) {
		t.Fatalf("set_tid probe: %v, want nil or EINVAL", err)
	}
	if _, werr := unix.Wait4(-1, nil, unix.WNOHANG, nil); !errors.Is(werr, unix.ECHILD) {
		t.Errorf("a child is left after the probe: wait4 says %v", werr)
	}
	t.Logf("kernel accepts multi-level set_tid: %v", err == nil)
}

// checkResult is `nsinit check --json`'s output.
type checkResult struct {
	Ready  bool           `json:"ready"`
	Status int            `json:"status"`
	Probes []probe.Result `json:"probes"`
}

// runCheck runs `nsinit check --json` through prefix (setpriv, say) with
// its output in a file (testutil.RunCmd); the probe writes nothing but
// the JSON.
func runCheck(t *testing.T, prefix ...string) (checkResult, int) {
	t.Helper()
	args := append(prefix, testutil.Binary(t), "check", "--json")
	out, err := testutil.RunCmd(t, exec.Command(args[0], args[1:]...))
	code := testutil.ExitCode(err)
	if code < 0 {
		t.Fatalf("%q: %v", args, err)
	}
	var res checkResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%q: %v\n%s", args, err, out)
	}
	return res, code
}

// TestCheckCommandRoot: `nsinit check --json` as root: ready, status 0,
// every probe works.
func TestCheckCommandRoot(t *testing.T) {
	testutil.Require(t, testutil.Root, testutil.BPF, testutil.SetTID)
	res, code := runCheck(t)
	if code != 0 || !res.Ready || len(res.Probes) == 0 {
		t.Fatalf("status %d, ready %v, %d probes", code, res.Ready, len(res.Probes))
	}
	for _, r := range res.Probes {
		if !r.Works {
			t.Errorf("%s: missing as root (%s)", r.Name, r.Detail)
		}
	}
}

// TestCheckCommandUnprivileged: run as nobody (setpriv, no capabilities),
// every capability and the privileged operations report missing for lack
// of permission, what needs none still works, and the status is 203
// (capability).
func TestCheckCommandUnprivileged(t *testing.T) {
	testutil.Require(t, testutil.Root)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("no setpriv (util-linux)")
	}
	res, code := runCheck(t, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all")
	if code != 203 || res.Ready {
		t.Errorf("status %d ready %v, want 203 and not ready", code, res.Ready)
	}
	byName := map[string]probe.Result{}
	for _, r := range res.Probes {
		byName[r.Name] = r
		if strings.HasPrefix(r.Name, "CAP_") && (r.Works || !r.Permission) {
			t.Errorf("%s: works %v permission %v, want missing for lack of permission", r.Name, r.Works, r.Permission)
		}
	}
	for _, n := range []string{"clone3 set_tid", "ns_last_pid writable", "pidfd setns"} {
		if r := byName[n]; r.Works || !r.Permission {
			t.Errorf("%s: works %v permission %v (%s), want missing for lack of permission", n, r.Works, r.Permission, r.Detail)
		}
	}
	for _, n := range []string{"pidfd_open", "BTF", "guard tracepoints", "pid_max"} {
		if r := byName[n]; !r.Works {
			t.Errorf("%s: missing unprivileged (%s), want works", n, r.Detail)
		}
	}
}
