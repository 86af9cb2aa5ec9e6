package restorer

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
	"github.com/nsinit/nsinit/pstree"
)

// BenchmarkRestoreScale is issue #14's "restore in linear time": trees of
// 1,000, 5,000 and 10,000 tasks over 3 pid levels (bigTree's shape),
// restored with every level set by set_tid, and in the same rounds the
// same tree made the ordinary way by testdata/treebuilder.c (fork and
// exec, pids chosen by the kernel), and for the stopped payload the flat
// set_tid floor (floorTree). The exec payload runs /bin/busybox sleep in
// every task, as the C builder does; the stopped payload has the inits
// stopped and every other task a zombie, the C builder the inits in pause()
// and the others exited. The runs of a round go in a shuffled order, after
// an untimed tree of the largest size.
//
// It reports the restore's wall-clock time per task at each size, its
// ratio to the C builder's and to the floor's, and growth-restore: the
// time per task at the largest size over the time per task at the
// smallest (1 for a restore in linear time; growth-C is the builder's
// own). The same with cpu- in front is processor time (the restorer's and
// every task's: treeCPU), which the other users of a shared machine
// disturb less than wall-clock time.
//
// NSINIT_BENCH_SIZES replaces the sizes (comma-separated).
// NSINIT_BENCH_BASELINE_TEST names another build of this package's test
// binary (an older commit's library with this file): its Execute is timed
// in the same rounds (TestBenchRestoreOnce), for a before/after side by
// side.
func BenchmarkRestoreScale(b *testing.B) {
	needRoot(b)
	cb := treeBuilder(b)
	sizes := scaleSizes(b)
	baseline := os.Getenv("NSINIT_BENCH_BASELINE_TEST")
	for _, c := range []struct {
		name string
		pay  Payload
		mk   func(n, base int) *pstree.Tree
	}{{"exec", PayloadExec, bigTree}, {"stopped", PayloadStopped, benchTree}} {
		b.Run(c.name, func(b *testing.B) {
			runs := map[string]func(n int) cost{
				"restore": func(n int) cost {
					return restoreOnce(b, c.mk, n, Options{Payload: c.pay, Features: features})
				},
				"C": func(n int) cost { return buildTreeC(b, cb, n, c.name) },
			}
			if c.pay == PayloadStopped {
				runs["floor"] = func(n int) cost {
					return restoreOnce(b, floorTree, n, Options{Payload: PayloadStopped, Features: features})
				}
			}
			if baseline != "" {
				runs["baseline"] = func(n int) cost { return baselineOnce(b, baseline, n, c.name) }
			}
			names := make([]string, 0, len(runs))
			total := map[string][]cost{}
			for name := range runs {
				names = append(names, name)
				total[name] = make([]cost, len(sizes))
			}
			// The first tree of a size the machine has not seen lately
			// is slower for everyone (measured: 2 to 4 times, the C
			// builder's too), the kernel growing its caches of tasks,
			// pids and memory maps: one untimed tree of the largest size
			// first.
			buildTreeC(b, cb, slices.Max(sizes), "stopped")
			b.ResetTimer()
			rounds := make([]int, len(sizes))
			for i := 0; i < b.N; i++ {
				for k, n := range sizes {
					if !awaitWindow(n + 1) {
						b.Logf("round %d: no window of %d free host pids, %d tasks not measured", i, n+1, n)
						continue
					}
					rand.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
					for _, name := range names {
						total[name][k].add(runs[name](n))
					}
					rounds[k]++
				}
			}
			reportScale(b, sizes, rounds, total)
		})
	}
}

// reportScale reports, for each size, the restore's wall-clock time per
// task and its ratios to the other runs' (x-C-1000: to the C builder's at
// 1,000 tasks), the same of the processor time (cpu-), and the growths
// from the smallest size measured to the largest (a size is left out of a
// round when no window of free host pids comes within a minute).
func reportScale(b *testing.B, sizes, rounds []int, total map[string][]cost) {
	var measured []int // indexes of the sizes measured in some round
	for k := range sizes {
		if rounds[k] > 0 {
			measured = append(measured, k)
		}
	}
	if len(measured) == 0 {
		b.Skip("no size measured: no window of free host pids")
	}
	for _, m := range []struct {
		prefix string
		of     func(cost) time.Duration
	}{{"", func(c cost) time.Duration { return c.wall }}, {"cpu-", func(c cost) time.Duration { return c.cpu }}} {
		perTask := func(name string, k int) float64 {
			return float64(m.of(total[name][k]).Microseconds()) / float64(sizes[k]*rounds[k])
		}
		first, last := measured[0], measured[len(measured)-1]
		for _, k := range measured {
			n := sizes[k]
			b.ReportMetric(perTask("restore", k), fmt.Sprintf("%sus/task-%d", m.prefix, n))
			for _, ref := range []string{"C", "floor", "baseline"} {
				if total[ref] != nil {
					b.ReportMetric(perTask("restore", k)/perTask(ref, k), fmt.Sprintf("%sx-%s-%d", m.prefix, ref, n))
				}
			}
			if total["baseline"] != nil {
				b.ReportMetric(perTask("baseline", k), fmt.Sprintf("%sbaseline-us/task-%d", m.prefix, n))
			}
		}
		for _, name := range []string{"restore", "C", "floor", "baseline"} {
			if total[name] != nil {
				b.ReportMetric(perTask(name, last)/perTask(name, first), fmt.Sprintf("%sgrowth-%s", m.prefix, name))
			}
		}
	}
}

// awaitWindow says whether n free host pids in a row are there (freeBase's
// search), waiting up to a minute for one: on the shared machine other
// test suites hold pids all over the range for minutes at a time.
func awaitWindow(n int) bool {
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if freeBaseFrom(2000, n) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

func scaleSizes(b *testing.B) []int {
	s := os.Getenv("NSINIT_BENCH_SIZES")
	if s == "" {
		return []int{1000, 5000, 10000}
	}
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 12 {
			b.Fatalf("NSINIT_BENCH_SIZES: %q is not a size of at least 12", f)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// treeBuilder compiles testdata/treebuilder.c (static, as the restored
// tasks' busybox is).
func treeBuilder(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "treebuilder")
	if out, err := exec.Command("cc", "-O2", "-static", "-Wall", "-o", bin, "testdata/treebuilder.c").CombinedOutput(); err != nil {
		b.Skipf("building testdata/treebuilder.c (needs cc and a static libc): %v\n%s", err, out)
	}
	return bin
}

// buildTreeC has treebuilder make a tree of n tasks (mode exec or stopped)
// and returns the time from its start until every task of the tree is made
// (the readiness pipe's end of file), and the processor time of all its
// processes then (treeCPU).
func buildTreeC(b *testing.B, bin string, n int, mode string) cost {
	ready, readyW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer ready.Close()
	stop, stopW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, strconv.Itoa(n), mode)
	cmd.Stdin, cmd.Stderr, cmd.ExtraFiles = stop, os.Stderr, []*os.File{readyW}
	start := time.Now()
	err = cmd.Start()
	readyW.Close()
	stop.Close()
	if err != nil {
		stopW.Close()
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, ready)
	c := cost{wall: time.Since(start), cpu: treeCPU(cmd.Process.Pid)}
	stopW.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("treebuilder %d %s: %v", n, mode, err)
	}
	return c
}

// baselineOnce runs TestBenchRestoreOnce in the test binary bin and
// returns the cost of its restore.
func baselineOnce(b *testing.B, bin string, n int, mode string) cost {
	out := filepath.Join(b.TempDir(), "cost")
	cmd := exec.Command(bin, "-test.run", "^TestBenchRestoreOnce$", "-test.v")
	// The window is found here: on the shared machine the child's own
	// search found none now and then, where this process had just found
	// one.
	base := freeBase(b, 2000, n+1)
	cmd.Env = append(os.Environ(), fmt.Sprintf("NSINIT_BENCH_ONCE=%d,%s,%s,%d", n, mode, out, base))
	o, err := testutil.RunCmd(b, cmd)
	if err != nil {
		b.Fatalf("baseline %s: %v\n%s", bin, err, o)
	}
	var c cost
	txt, err := os.ReadFile(out)
	if err == nil {
		_, err = fmt.Sscan(string(txt), &c.wall, &c.cpu)
	}
	if err != nil {
		b.Skipf("baseline %s: no time (%v)\n%s", bin, err, o)
	}
	return c
}

// TestBenchRestoreOnce is BenchmarkRestoreScale's restore in another
// process (NSINIT_BENCH_ONCE=N,PAYLOAD,FILE,BASE): it restores N tasks at
// host pids from BASE (another window if one is taken meanwhile) and
// writes the wall-clock and processor nanoseconds of the restore to FILE.
func TestBenchRestoreOnce(t *testing.T) {
	arg := os.Getenv("NSINIT_BENCH_ONCE")
	if arg == "" {
		t.Skip("for BenchmarkRestoreScale's baseline only")
	}
	needRoot(t)
	f := strings.Split(arg, ",")
	if len(f) != 4 {
		t.Fatalf("NSINIT_BENCH_ONCE=%q: want N,exec|stopped,FILE,BASE", arg)
	}
	n, err := strconv.Atoi(f[0])
	if err == nil {
		onceBase, err = strconv.Atoi(f[3])
	}
	if err != nil {
		t.Fatalf("NSINIT_BENCH_ONCE=%q: %v", arg, err)
	}
	opt, mk := Options{Payload: PayloadExec, Features: features}, bigTree
	if f[1] == "stopped" {
		opt.Payload, mk = PayloadStopped, benchTree
	}
	c := restoreOnce(t, mk, n, opt)
	if err := os.WriteFile(f[2], fmt.Appendf(nil, "%d %d", c.wall, c.cpu), 0o644); err != nil {
		t.Fatal(err)
	}
}
