package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// roleEnv makes the test binary, re-executed, play a child role instead of
// running the tests.
const roleEnv = "NSINIT_BPF_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "":
		os.Exit(m.Run())
	case "threads":
		threadsChild()
	case "churn":
		churnChild()
	case "noperm":
		noPermChild()
	case "subreaper":
		subreaperChild()
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", roleEnv, os.Getenv(roleEnv))
		os.Exit(2)
	}
}

// threadsChild creates and ends threads on command from stdin:
//
//	spawn N  start N goroutines each locked to a new thread; print their tids
//	end      let them return while locked, which ends their threads
//	exit N   exit_group(N)
func threadsChild() {
	in := bufio.NewScanner(os.Stdin)
	var release chan struct{}
	var wg sync.WaitGroup
	fmt.Println("ready")
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		n, _ := strconv.Atoi(arg)
		switch cmd {
		case "spawn":
			// A locked goroutine may land on a thread that already exists;
			// keep those occupied (never released) and try again, so that
			// the N threads reported are new ones.
			old := ownTids()
			release = make(chan struct{})
			var out []string
			for len(out) < n {
				tid := make(chan int)
				wg.Add(1)
				go func() {
					runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
					tid <- unix.Gettid()
					if !old[unix.Gettid()] {
						defer wg.Done()
						<-release
						return
					}
					wg.Done()
					select {} // occupy an old thread for good
				}()
				if t := <-tid; !old[t] {
					out = append(out, strconv.Itoa(t))
				}
			}
			fmt.Println(strings.Join(out, " "))
		case "end":
			close(release)
			wg.Wait()
			fmt.Println("ok")
		case "exit":
			os.Exit(n)
		}
	}
	os.Exit(3)
}

// ownTids lists this process's threads by their tid in its own pid
// namespace (the last NSpid field; /proc here may be an outer procfs).
func ownTids() map[int]bool {
	m := map[int]bool{}
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "NSpid:" {
				n, _ := strconv.Atoi(f[len(f)-1])
				m[n] = true
			}
		}
	}
	return m
}

// churnChild reads a number N, then creates and ends N threads, one after
// another: goroutines locked to a thread that they end by returning.
func churnChild() {
	fmt.Println("ready")
	var n int
	fmt.Scan(&n)
	for range n {
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(done)
		}()
		<-done
	}
	os.Exit(0)
}

// noPermChild drops CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN from the
// effective set of its (locked) thread, loads the programs and prints the
// error.
func noPermChild() {
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		fmt.Println("capget:", err)
		os.Exit(1)
	}
	for _, c := range []int{unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_SYS_ADMIN} {
		data[c/32].Effective &^= 1 << (uint(c) % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		fmt.Println("capset:", err)
		os.Exit(1)
	}
	w, err := Load()
	if err == nil {
		w.Close()
		fmt.Println("loaded")
		os.Exit(1)
	}
	fmt.Println(err)
	if !errors.Is(err, unix.EPERM) {
		os.Exit(1)
	}
	os.Exit(0)
}
