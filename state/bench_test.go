//go:build amd64

package state

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nsinit/nsinit/imagefile"
	"github.com/nsinit/nsinit/internal/testutil"
	"golang.org/x/sys/unix"
)

// BenchmarkInjectedSyscall measures the design's unit of work: one system
// call injected into a stopped task with ptrace (set registers, resume,
// wait for the int3, read registers), beside the same call made natively,
// which is what a restorer blob running inside the task would pay.
func BenchmarkInjectedSyscall(b *testing.B) {
	testutil.Require(b, testutil.Root)
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		b.Skip(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	runtime.LockOSThread() // ptrace requests come from the attaching thread
	defer runtime.UnlockOSThread()
	if err := seize(pid, unix.PTRACE_O_EXITKILL); err != nil {
		b.Fatal(err)
	}
	base, err := getRegs(pid)
	if err != nil {
		b.Fatal(err)
	}
	// sleep's own code at its stop becomes `syscall; int3`: it never
	// runs again.
	if err := pokeWord(pid, base.Rip, []byte(trapCode)); err != nil {
		b.Fatal(err)
	}
	in := injector{pid: pid, code: base.Rip, base: base}
	b.ResetTimer()
	t0 := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := in.call(unix.SYS_GETPID); err != nil {
			b.Fatal(err)
		}
	}
	injected := time.Since(t0)
	b.StopTimer()
	t1 := time.Now()
	for i := 0; i < b.N; i++ {
		syscall.RawSyscall(unix.SYS_GETPID, 0, 0, 0)
	}
	native := time.Since(t1)
	b.ReportMetric(float64(injected.Nanoseconds())/float64(b.N), "ns/injected")
	b.ReportMetric(float64(native.Nanoseconds())/float64(b.N), "ns/native")
	b.ReportMetric(float64(injected)/float64(native), "injected/native")
}

// BenchmarkDumpRestoreHeap: `nsinit dump --state --kill --unchecked` and
// `nsinit restore -d` of a task with a 256 MiB dirty heap, each beside
// reading as many bytes with dd from /dev/zero into a pipe, measured in
// the same iteration; reported as ratios (dump/dd, restore/dd) and as the
// size of pages.img over the dirty bytes. Each iteration checks that the
// restored task continued.
func BenchmarkDumpRestoreHeap(b *testing.B) {
	testutil.Require(b, testutil.Root, testutil.SetTID)
	const heapMB = 256
	if _, err := exec.LookPath("gcc"); err != nil {
		b.Skip("needs gcc")
	}
	bin := filepath.Join(b.TempDir(), "counter")
	if out, err := exec.Command("gcc", "-static", "-O2", "-o", bin, "testdata/counter.c").CombinedOutput(); err != nil {
		b.Fatalf("gcc: %v\n%s", err, out)
	}
	nsinitBin := testutil.Binary(b)
	run := func(args ...string) time.Duration {
		f, err := os.CreateTemp(b.TempDir(), "log")
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		c := exec.Command(nsinitBin, args...)
		c.Stdout, c.Stderr = f, f
		t0 := time.Now()
		err = c.Run()
		d := time.Since(t0)
		if err != nil {
			out, _ := os.ReadFile(f.Name())
			b.Fatalf("nsinit %v: %v\n%s", args, err, out)
		}
		return d
	}
	dd := func() time.Duration {
		c := exec.Command("dd", "if=/dev/zero", "bs=1M", "count="+strconv.Itoa(heapMB))
		p, err := c.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, p)
		c.Wait()
		return time.Since(t0)
	}
	var dumpT, restoreT, ddT time.Duration
	var pages, dirty int64
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		out, img := filepath.Join(dir, "count"), filepath.Join(dir, "img")
		c := exec.Command(bin, "0", out, strconv.Itoa(heapMB), "100000")
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		waitFile(b, out, 1)
		ddT += dd()
		dumpT += run("dump", "-t", strconv.Itoa(c.Process.Pid), "-D", img, "--state", "--kill", "--unchecked")
		c.Wait()
		st, err := os.Stat(filepath.Join(img, PagesFileName))
		if err != nil {
			b.Fatal(err)
		}
		pages += st.Size()
		dirty += heapMB << 20
		tr, err := imagefile.Read(img)
		if err != nil {
			b.Fatal(err)
		}
		ddT += dd()
		restoreT += run("restore", "-D", img, "-d")
		// The restored task sleeps for 100 s: the tests prove that it
		// continues; here it must at least be there.
		if err := unix.Kill(tr.Tasks[0].PID(), 0); err != nil {
			b.Fatalf("restored task %d: %v", tr.Tasks[0].PID(), err)
		}
		unix.Kill(tr.Tasks[0].PID(), unix.SIGKILL)
		unix.Wait4(tr.Tasks[0].PID(), nil, 0, nil)
		// Removed now, not at the end: gigabytes of dirty page cache
		// would throttle the next iterations' writes.
		os.RemoveAll(dir)
	}
	half := float64(ddT) / 2 // dd ran twice an iteration
	b.ReportMetric(float64(dumpT.Milliseconds())/float64(b.N), "dump-ms")
	b.ReportMetric(float64(restoreT.Milliseconds())/float64(b.N), "restore-ms")
	b.ReportMetric(half/1e6/float64(b.N), "dd-ms")
	b.ReportMetric(float64(dumpT)/half, "dump/dd")
	b.ReportMetric(float64(restoreT)/half, "restore/dd")
	b.ReportMetric(float64(pages)/float64(dirty), "image/dirty")
}

// waitFile waits until the counter wrote n lines.
func waitFile(b *testing.B, p string, n int) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if data, _ := os.ReadFile(p); countLines(data) >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no %d lines after 60s", p, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
