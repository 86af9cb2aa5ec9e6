package restorer

import (
	"errors"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/pstree"
)

// TestPlanRefusesWhatTheKernelLacks: an image carried to another kernel is
// refused before anything is created when that kernel lacks what the image
// needs, naming the piece and the kernel the image came from, which the
// image records (issue #18, item 4).
func TestPlanRefusesWhatTheKernelLacks(t *testing.T) {
	tr := nsTree()
	tr.Kernel, tr.PidMax = "6.18.0-test", 4194304
	dir := t.TempDir()
	if err := imagefile.Write(dir, tr); err != nil {
		t.Fatal(err)
	}
	back, err := imagefile.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if back.Kernel != tr.Kernel || back.PidMax != tr.PidMax {
		t.Fatalf("image round trip: kernel %q pid_max %d, want %q %d", back.Kernel, back.PidMax, tr.Kernel, tr.PidMax)
	}
	maxPID := 0
	for _, tk := range back.Tasks {
		maxPID = max(maxPID, tk.PID())
	}
	var netNS pstree.NSID
	for _, ns := range back.Namespaces {
		if ns.Kind == pstree.NetNS && !ns.Ambient {
			netNS = ns.ID
		}
	}
	if netNS == 0 {
		t.Fatal("nsTree has no net namespace of its own")
	}
	for name, c := range map[string]struct {
		f    Features
		want string
	}{
		"no set_tid":   {Features{NoSetTID: true}, "no clone3 with set_tid"},
		"no net ns":    {Features{MissingNS: []pstree.NSKind{pstree.NetNS}}, "net namespace"},
		"low pid_max":  {Features{PidMax: maxPID}, "raise kernel.pid_max"},
		"no time ns":   {Features{MissingNS: []pstree.NSKind{pstree.TimeNS}}, ""},
		"all it needs": {Features{PidMax: maxPID + 1}, ""},
	} {
		_, err := NewPlan(back, Options{Features: c.f})
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dumped on Linux 6.18.0-test") {
			t.Errorf("%s: %v; want ErrUnsupported with %q and the image's kernel", name, err, c.want)
		}
	}
	for _, bad := range []*pstree.Tree{{Kernel: strings.Repeat("x", 65)}, {Kernel: "6.1\n"}, {PidMax: -1}, {PidMax: pstree.MaxPID + 1}} {
		tr := nsTree()
		tr.Kernel, tr.PidMax = bad.Kernel, bad.PidMax
		if err := pstree.Validate(tr); !errors.Is(err, pstree.ErrInvalid) {
			t.Errorf("kernel %q pid_max %d: Validate = %v, want ErrInvalid", bad.Kernel, bad.PidMax, err)
		}
	}
}

// TestRefusesCapabilitiesBeyondTheBoundingSet: a task of the
// restorer's own user namespace cannot get a capability the restorer's
// bounding set lacks (a machine whose root has fewer, like this one without
// CAP_SYS_RESOURCE); one in a user namespace the restore creates can.
func TestRefusesCapabilitiesBeyondTheBoundingSet(t *testing.T) {
	const all = uint64(1)<<41 - 1
	const noResource = all &^ (1 << 24)
	mk := func(ambient bool) *pstree.Tree {
		tr := f43()
		tr.Namespaces = append(tr.Namespaces, pstree.Namespace{ID: 99, Kind: pstree.UserNS, Ambient: ambient,
			UIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 1 << 20}}, GIDMap: []pstree.IDMapEntry{{Inside: 0, Outside: 0, Count: 1 << 20}}})
		for i := range tr.Tasks {
			tr.Tasks[i].NS[pstree.UserNS] = 99
			tr.Tasks[i].Creds.CapPrm, tr.Tasks[i].Creds.CapEff, tr.Tasks[i].Creds.CapBnd = all, all, all
		}
		return tr
	}
	err := checkCapBnd(mk(true), noResource)
	if !errors.Is(err, ErrCapability) || !strings.Contains(err.Error(), "capabilities 24,") {
		t.Errorf("ambient user ns, bounding set without 24: %v; want ErrCapability naming 24", err)
	}
	if err := checkCapBnd(mk(true), all); err != nil {
		t.Errorf("ambient user ns, full bounding set: %v", err)
	}
	if err := checkCapBnd(mk(false), noResource); err != nil {
		t.Errorf("a user namespace the restore creates: %v", err)
	}
}
