package dump

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/pstree"
)

// benchScript spreads 3*K sleepers over levels 0, 1 and 2 (plus the root,
// two unshare processes and two inits: 3*K+5 tasks).
const benchScript = `
spawn() { i=0; while [ $i -lt $K ]; do busybox sleep 100000 & i=$((i+1)); done; }
spawn
unshare -fp busybox sh -c '
  spawn() { i=0; while [ $i -lt $K ]; do busybox sleep 100000 & i=$((i+1)); done; }
  spawn
  unshare -fp busybox sh -c "
    spawn() { i=0; while [ \$i -lt \$K ]; do busybox sleep 100000 & i=\$((i+1)); done; }
    spawn
    wait"
  wait' &
wait
`

func BenchmarkDump1000(b *testing.B)  { benchDump(b, 1000) }
func BenchmarkDump10000(b *testing.B) { benchDump(b, 10000) }

// benchDump reports the dump of an n-task tree (frozen with cgroup v2) as
// tasks/s and as a ratio to the bare cost of reading the same /proc files
// with os.ReadFile/os.Readlink and no parsing, measured alternately in the
// same run.
func benchDump(b *testing.B, n int) {
	k := (n - 5 + 2) / 3
	os.Setenv("K", strconv.Itoa(k))
	defer os.Unsetenv("K")
	tt := startTree(b, benchScript, 3*k+5, true)
	var dumpDur, bareDur time.Duration
	var tr *pstree.Tree
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		var err error
		tr, err = Dump(tt.root, Options{})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := bareRead(tt.root); err != nil {
			b.Fatal(err)
		}
		dumpDur += t1.Sub(t0)
		bareDur += time.Since(t1)
	}
	b.StopTimer()
	if len(tr.Tasks) != 3*k+5 {
		b.Fatalf("dumped %d tasks, want %d", len(tr.Tasks), 3*k+5)
	}
	b.ReportMetric(float64(len(tr.Tasks))*float64(b.N)/dumpDur.Seconds(), "tasks/s")
	b.ReportMetric(float64(dumpDur)/float64(bareDur), "x-bare-read")
	b.ReportMetric(dumpDur.Seconds()/float64(b.N), "s/dump")
}

// bareRead reads what a dump reads (the /proc scan, then each task's stat,
// status, task list and thread status, ns links, cmdline, environ, exe,
// cwd and root), without parsing beyond what finding the tree needs.
func bareRead(root int) error {
	members, err := discover(procfs.New(""), root)
	if err != nil {
		return err
	}
	for _, m := range members {
		p := "/proc/" + strconv.Itoa(m.pid) + "/"
		for _, f := range []string{"stat", "status", "cmdline", "environ"} {
			if _, err := os.ReadFile(p + f); err != nil {
				return err
			}
		}
		ents, err := os.ReadDir(p + "task")
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Name() != strconv.Itoa(m.pid) {
				if _, err := os.ReadFile(p + "task/" + e.Name() + "/status"); err != nil {
					return err
				}
			}
		}
		for _, k := range pstree.AllNSKinds() {
			if _, err := os.Readlink(p + "ns/" + k.ProcName()); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
		for _, l := range []string{"exe", "cwd", "root"} {
			if _, err := os.Readlink(p + l); err != nil {
				return err
			}
		}
	}
	return nil
}
