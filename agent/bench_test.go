package agent_test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

// BenchmarkReapBurst hands a burst of 10,000 zombies to nsinit (PID 1 of a
// new pid namespace) and measures the time until all are gone, side by side
// with the kernel floor: the same generator reaping its own children. Both
// include making the 10,000 children (vfork + _exit), as the floor must.
// Reported: ns per zombie for each, and their ratio.
func BenchmarkReapBurst(b *testing.B) {
	testutil.Require(b, testutil.Root)
	const n = 10000
	h := helperPath(b)
	var floor, init time.Duration
	for i := 0; i < b.N; i++ {
		floor += handover(b, exec.Command(h, "handover", strconv.Itoa(n), "reap"))
		cmd := exec.Command(testutil.Binary(b), "--", h, "handover", strconv.Itoa(n), "keep")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		init += handover(b, cmd)
	}
	b.ReportMetric(float64(floor.Nanoseconds())/float64(b.N*n), "floor-ns/zombie")
	b.ReportMetric(float64(init.Nanoseconds())/float64(b.N*n), "nsinit-ns/zombie")
	b.ReportMetric(float64(init)/float64(floor), "ratio-to-floor")
}

func handover(b *testing.B, cmd *exec.Cmd) time.Duration {
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("%v: %v", cmd.Args, err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		b.Fatalf("%v printed %q", cmd.Args, out)
	}
	return time.Duration(ns)
}

func helperPath(b *testing.B) string {
	if helperBin == "" {
		b.Fatal("the C test helper did not build")
	}
	return helperBin
}

// BenchmarkIdleFootprint reports nsinit's idle memory as PID 1 (peak RSS,
// VmHWM), its thread count and the size of its binary.
func BenchmarkIdleFootprint(b *testing.B) {
	testutil.Require(b, testutil.Root)
	bin := testutil.Binary(b)
	var hwm, threads float64
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(bin, "--", "sleep", "1000")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // let it settle into its idle loop
		st, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			b.Fatal(err)
		}
		kb, _ := strconv.Atoi(strings.Fields(testutil.Field(string(st), "VmHWM"))[0])
		th, _ := strconv.Atoi(testutil.Field(string(st), "Threads"))
		hwm += float64(kb)
		threads += float64(th)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(hwm/float64(b.N), "VmHWM-kB")
	b.ReportMetric(threads/float64(b.N), "threads")
	b.ReportMetric(float64(fi.Size())/1024, "binary-kB")
}
