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
