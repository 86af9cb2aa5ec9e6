package bpf

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// forkLoop runs n fork+exec+exit cycles of busybox true in a new pid
// namespace and returns the CPU time the tree used (the shell and every
// child it reaped: wait4's rusage). When w is not nil the namespace is
// watched before the loop starts.
func forkLoop(b *testing.B, w *Watcher, n int) time.Duration {
	b.Helper()
	s := startShell(b)
	if w != nil {
		if _, err := w.WatchNS(s.nsFD); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Fprintf(s.in, "i=0; while [ $i -lt %d ]; do /bin/busybox true; i=$((i+1)); done; exit 0\n", n)
	s.in.Close()
	if err := s.cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	ps := s.cmd.ProcessState
	return ps.UserTime() + ps.SystemTime()
}

// BenchmarkForkExitOverhead compares the CPU cost of a fork/exit loop in
// a pid namespace with the programs detached and attached (the namespace
// watched), side by side in one run; the ratio is the added CPU.
func BenchmarkForkExitOverhead(b *testing.B) {
	w := loadWatcher(b)
	needBusybox(b)
	const n = 200
	var off, on time.Duration
	for i := 0; i < b.N; i++ {
		w.Detach()
		w.Reset()
		off += forkLoop(b, nil, n)
		if err := w.Attach(); err != nil {
			b.Fatal(err)
		}
		on += forkLoop(b, w, n)
		c, _ := w.Counts()
		if c.Events != 3*n+1 { // fork, exec, exit each; the shell's exit
			b.Fatalf("counted %d events, want %d", c.Events, 3*n+1)
		}
	}
	w.Detach()
	forks := float64(b.N * n)
	b.ReportMetric(float64(off.Microseconds())/forks, "cpu-us/fork-detached")
	b.ReportMetric(float64(on.Microseconds())/forks, "cpu-us/fork-attached")
	b.ReportMetric(float64(on)/float64(off), "attached/detached")
}

// BenchmarkEventRate measures events per second through the ring buffer
// with a live reader, and checks that the counters account for every
// event: received + dropped == counted.
func BenchmarkEventRate(b *testing.B) {
	w := loadWatcher(b)
	needBusybox(b)
	// Kernel run-time statistics of the programs, while the benchmark runs.
	if st, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME); err == nil {
		defer st.Close()
	}
	if err := w.Attach(); err != nil {
		b.Fatal(err)
	}
	var received uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the live reader, polling as nsinit trace does
		defer wg.Done()
		for {
			_, err := w.Read(time.Now().Add(20 * time.Millisecond))
			if err == nil {
				received++
				continue
			}
			if !errors.Is(err, ErrNoEvent) {
				b.Error(err)
				return
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	// Thread churn in a watched namespace: the cheapest way to make
	// events (a thread create + exit is ~2 events for tens of us).
	start := time.Now()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), roleEnv+"=churn")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 6)
		io.ReadFull(out, buf) // "ready\n"
		fd, err := syscall.Open(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.WatchNS(fd); err != nil {
			b.Fatal(err)
		}
		syscall.Close(fd)
		fmt.Fprintln(in, "20000")
		if err := cmd.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	w.Detach()
	// Let the reader drain what is left, then stop it.
	for c, _ := w.Counts(); w.reader.AvailableBytes() > 0; c, _ = w.Counts() {
		_ = c
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	c, err := w.Counts()
	if err != nil {
		b.Fatal(err)
	}
	if received+c.Dropped != c.Events {
		b.Fatalf("received %d + dropped %d != counted %d", received, c.Dropped, c.Events)
	}
	b.ReportMetric(float64(c.Events)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(c.Dropped), "dropped")
	b.ReportMetric(float64(received), "received")
	var runs uint64
	var run time.Duration
	for _, p := range []*ebpf.Program{w.objs.OnFork, w.objs.OnExit, w.objs.OnExec} {
		if st, err := p.Stats(); err == nil {
			runs += st.RunCount
			run += st.Runtime
		}
	}
	if runs > 0 { // every run on the machine, matched or not
		b.ReportMetric(float64(run.Nanoseconds())/float64(runs), "ns/prog-run")
	}
}
