package vmtest

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsinit/nsinit/internal/testutil"
)

var vmFlag = flag.Bool("vm", false, "boot QEMU test VMs (make vm-test); without it the VM tests skip")

// guestPackages is THE list of the project's test packages run inside the
// VM, each as `go test -c` under nsinit with NSINIT_IN_VM=1 (so
// testutil.Require fails instead of skipping) and the package directory
// (with its testdata/) as working directory. Extend it as packages gain
// privileged tests: {Pkg: "./dump"}, {Pkg: "./restorer"}, {Pkg: "./bpf"}.
var guestPackages = []guestPackage{
	// nsinit as PID 1 of the machine.
	// nsinit as PID 1 of the machine, and make demo's tree dumped and
	// restored on this kernel.
	{Pkg: "./vm-test/guest", Needs: []string{"CONFIG_CGROUPS", "CONFIG_DEBUG_INFO_BTF", "CONFIG_CHECKPOINT_RESTORE"},
		Prepare: repoFiles("demo/tree.sh")},
	// The supervisor's tests; the guest has no C compiler, so their
	// helper is built here and named by NSINIT_TEST_HELPER.
	// 2 GiB: the burst of 10,000 orphans needs threads-max above 10,000,
	// which the kernel sizes from memory (512 MiB gives about 4,000).
	{Pkg: "./agent", Needs: []string{"CONFIG_PID_NS"}, MemoryMB: 2048,
		Prepare: cHelper("agent/testdata/helper.c", "NSINIT_TEST_HELPER")},
	// eBPF fork/exit/exec watcher on a kernel other than the dev machine's.
	{Pkg: "./bpf", Needs: []string{"CONFIG_BPF_SYSCALL", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_EVENTS"}},
	// clone3 set_tid, pidfds and setns wrappers.
	{Pkg: "./internal/sys", Needs: []string{"CONFIG_PID_NS", "CONFIG_CHECKPOINT_RESTORE"}},
	// Restore on another kernel: the set_tid probe (the 6.1 guest may set
	// every level in one clone3), the main scenarios in both payloads and
	// placements, namespaces, and dump -> kill -> restore -> check through
	// the binary. Not the 1000-task and random-tree tests (TCG is slow).
	// veth is a module in Debian's kernel: the test loads it.
	{Pkg: "./restorer", Needs: []string{"CONFIG_PID_NS", "CONFIG_NET_NS", "CONFIG_UTS_NS", "CONFIG_IPC_NS", "CONFIG_CHECKPOINT_RESTORE"},
		Run: "TestProbe|TestPlan(F43|Namespaces|UserNamespaces|PidForChildren|MultiLevel|Leaver|StandIn|OuterParentMovesLater)|TestRestore(SingleNamespace|F43|Zombies|BornVia|PidForChildren|Namespaces|UserNamespaces|LowPIDs|PIDTaken$|Agent|32Levels|CommNames|UserLauncherChildren|OrphanOfMember|OrphanSession|SplitGroup|LeaverByAMember|StandIn|OuterParentMovesLater|Creds|ParentThreads|Subreaper)|" +
			// Every TestE2E but TestE2EHostileImages, which is the same on
			// any kernel and reads another package's testdata, which the
			// guest lacks, and TestE2ELeaverHelpers, whose 12 real dumps
			// and restores (35 s under TCG) do not fit the guest's 4
			// minutes; the same shapes run there from hand-written images
			// (TestRestoreOrphanSession, SplitGroup, StandIn...).
			"TestE2E(Capabilities|CommNames|DumpKillRestoreCheck|InsideUserNamespaceContainer|RestoreThroughAgent|RestoreWithoutCapability|SignalMidRestore|UnshareWithoutFork|UserPidNamespaces|VethPing|WaitersAreNotRunAgain)",
		MemoryMB: 1024, Prepare: prepareAll(
			kernelModule("kernel/drivers/net/veth.ko", "NSINIT_TEST_VETH_KO"),
			// TestE2EUserPidNamespaces' clone(CLONE_NEWUSER|CLONE_NEWPID) helper.
			cHelper("restorer/testdata/clonens.c", "NSINIT_TEST_CLONENS"))},
	// Stateful dump and restore on another kernel: the static counter 3
	// pid levels deep (both freezers), busybox sh with its handlers
	// (eBPF), the refusals. The counter is built here (no compiler in
	// the guest); the dynamic counter and Python are skipped there.
	{Pkg: "./state", Needs: []string{"CONFIG_PID_NS", "CONFIG_CGROUPS", "CONFIG_CHECKPOINT_RESTORE", "CONFIG_DEBUG_INFO_BTF"},
		Run: "TestStateContinues|TestStatePipeBetweenNamespaces|TestStateStoppedTask|TestStateThreads|TestStateRefusesWithName|TestValidateRefuses|TestParseMapLine|TestResumed|TestFreeRange", MemoryMB: 1024,
		Prepare: prepareAll(cHelper("state/testdata/counter.c", "NSINIT_TEST_COUNTER"), cHelper("state/testdata/pipe.c", "NSINIT_TEST_PIPE"),
			cHelper("state/testdata/threads.c", "NSINIT_TEST_THREADS"))},
	// Dump on another kernel: the tests that need neither iproute2 nor
	// util-linux (TestDumpUserNamespaces runs `unshare`, the net tests
	// `ip`).
	{Pkg: "./dump", Needs: []string{"CONFIG_PID_NS", "CONFIG_CGROUPS", "CONFIG_CHECKPOINT_RESTORE"},
		Run: "TestWalkMatchesPlainPath|TestDumpRefusesForeignNamespace|TestDumpStoppedTask|TestDumpBigTree"},
	// Reading and writing another pid namespace's cursor through a probe.
	{Pkg: "./internal/nscursor", Needs: []string{"CONFIG_PID_NS", "CONFIG_CHECKPOINT_RESTORE"}},
}

// kernelModule puts the guest kernel's module rel (under lib/modules/VER/)
// into the guest and names its path in env, for a test to insmod.
func kernelModule(rel, env string) func(*testing.T, string) ([]File, []string) {
	return func(t *testing.T, dir string) ([]File, []string) {
		m, _ := filepath.Glob(filepath.Join(DefaultCacheDir(), "linux-*", "lib", "modules", "*", rel))
		if len(m) == 0 {
			return nil, nil // the test then finds the module missing
		}
		guest := "/tests/" + filepath.Base(rel)
		return []File{{Path: guest, Src: m[len(m)-1]}}, []string{env + "=" + guest}
	}
}

type guestPackage struct {
	Pkg string // package path relative to the repository root
	Run string // -test.run pattern; empty means all
	// Needs lists kernel options (CONFIG_X) that must be built in; the
	// row skips, naming the option, on a kernel without one.
	Needs []string
	// Prepare, if set, builds on the host what the tests need in the
	// guest, in dir, and returns the files and environment to add.
	Prepare func(t *testing.T, dir string) ([]File, []string)
	// MemoryMB is the guest's memory; 0 means the harness default.
	MemoryMB int
}

// repoFiles puts files of the repository into the guest under /src/.
// prepareAll runs each of preps and puts all their files and variables
// into the guest.
func prepareAll(preps ...func(*testing.T, string) ([]File, []string)) func(*testing.T, string) ([]File, []string) {
	return func(t *testing.T, dir string) ([]File, []string) {
		var files []File
		var env []string
		for _, prep := range preps {
			f, e := prep(t, dir)
			files, env = append(files, f...), append(env, e...)
		}
		return files, env
	}
}

func repoFiles(paths ...string) func(*testing.T, string) ([]File, []string) {
	return func(t *testing.T, dir string) ([]File, []string) {
		var files []File
		for _, p := range paths {
			files = append(files, File{Path: "/src/" + p, Src: filepath.Join(testutil.RepoRoot(), p)})
		}
		return files, nil
	}
}

// cHelper builds a static C test helper on the host (the guest has no
// compiler) and passes its guest path in the environment variable env.
func cHelper(src, env string) func(*testing.T, string) ([]File, []string) {
	return func(t *testing.T, dir string) ([]File, []string) {
		bin := filepath.Join(dir, filepath.Base(strings.TrimSuffix(src, ".c")))
		cc := exec.Command("cc", "-O2", "-static", "-Wall", "-o", bin, src)
		cc.Dir = testutil.RepoRoot()
		if out, err := cc.CombinedOutput(); err != nil {
			t.Fatalf("build %s for the guest (needs cc and a static libc): %v\n%s", src, err, out)
		}
		guest := "/tests/" + filepath.Base(bin)
		return []File{{Path: guest, Src: bin}}, []string{env + "=" + guest}
	}
}

// guestTestTimeout bounds one guest test binary's run (the boot gets a
// minute more). It is a safety net against a hung guest, not a timing
// claim: under TCG, with the other VM packages booting beside it and CI's
// load on the same 2 cores, the restorer's list took over 4 minutes.
const guestTestTimeout = 12 * time.Minute

var suiteStart = time.Now()

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if *vmFlag {
		fmt.Printf("vm-test: suite total %v\n", time.Since(suiteStart).Round(time.Millisecond))
	}
	os.Exit(code)
}

var (
	kernelOnce sync.Once
	kernel     Kernel
	kernelErr  error
)

// needVM skips without -vm; with it, every missing piece is a failure.
func needVM(t *testing.T) string {
	t.Helper()
	if !*vmFlag {
		t.Skip("boots QEMU: run with -vm (make vm-test)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 missing (scripts/install-deps.sh installs it): %v", err)
	}
	kernelOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		k, err := EnsureKernel(ctx, DefaultCacheDir())
		kernel, kernelErr = k, err
		if err == nil {
			fmt.Printf("vm-test: kernel %s (%s)\n", k.Version, k.Image)
		}
	})
	if kernelErr != nil {
		t.Fatalf("guest kernel: %v", kernelErr)
	}
	return kernel.Image
}

// needKernel skips when the guest kernel lacks a built-in option: a
// kernel without a needed feature is a reason, not a failure.
func needKernel(t *testing.T, options ...string) {
	t.Helper()
	for _, opt := range options {
		if ok, err := kernel.Builtin(opt); err == nil && !ok {
			t.Skipf("guest kernel %s lacks %s", kernel.Version, opt)
		}
	}
}

// boot runs cfg and logs the boot-to-result time.
func boot(t *testing.T, cfg Config) (Result, error) {
	t.Helper()
	cfg.Kernel = needVM(t)
	res, err := Run(context.Background(), cfg)
	t.Logf("%s: boot-to-result %v", t.Name(), res.Duration.Round(time.Millisecond))
	return res, err
}

// TestVMInitStatus: nsinit as the machine's init powers the VM off with
// its command's status, including death by a signal (128+N).
func TestVMInitStatus(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cmd    []string
		status int
	}{
		{"exit-0", []string{"/bin/sh", "-c", "exit 0"}, 0},
		{"exit-7", []string{"/bin/sh", "-c", "echo hello from the guest; exit 7"}, 7},
		{"killed-by-SIGTERM", []string{"/bin/sh", "-c", "kill -TERM $$"}, 128 + 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{Init: testutil.Binary(t), Cmd: tc.cmd}
			res, err := boot(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.status {
				t.Fatalf("status %d, want %d\n%s", res.Status, tc.status, res.Console)
			}
		})
	}
}

// TestVMMachineLayer boots miniinit, which has machine.Init but no
// real supervisor: when TestVMInitStatus fails and this passes, the
// supervisor (cmd/nsinit) is at fault, not the machine layer or harness.
func TestVMMachineLayer(t *testing.T) {
	needVM(t)
	bin := filepath.Join(t.TempDir(), "miniinit")
	build := exec.Command("go", "build", "-o", bin, "./vm-test/internal/miniinit")
	build.Dir = testutil.RepoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build miniinit: %v\n%s", err, out)
	}
	res, err := boot(t, Config{Init: bin, Cmd: []string{"/bin/sh", "-c", "test -e /proc/self && test -c /dev/null && exit 5"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 5 {
		t.Fatalf("status %d, want 5\n%s", res.Status, res.Console)
	}
}

// TestVMFailuresCaught: an init that dies (kernel panic) and a guest that
// never finishes are reported as errors with the console, never a hang.
func TestVMFailuresCaught(t *testing.T) {
	needVM(t)
	dir := t.TempDir()
	dying := filepath.Join(dir, "dying-init")
	os.WriteFile(dying, []byte("#!/bin/sh\necho init exits now\nexit 3\n"), 0o755)
	hanging := filepath.Join(dir, "hanging-init")
	os.WriteFile(hanging, []byte("#!/bin/sh\nwhile :; do /bin/busybox sleep 1; done\n"), 0o755)
	t.Run("kernel-panic", func(t *testing.T) {
		t.Parallel()
		_, err := boot(t, Config{Init: dying, Cmd: []string{"unused"}})
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrNoResult) || e.Reason != "kernel panic" {
			t.Fatalf("init exiting: got %v, want a kernel panic error", err)
		}
		if !strings.Contains(e.Console, "init exits now") {
			t.Errorf("console lacks the guest's output:\n%s", e.Console)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		_, err := boot(t, Config{Init: hanging, Cmd: []string{"unused"}, Timeout: 10 * time.Second})
		if !errors.Is(err, ErrNoResult) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("10 s timeout: got %v, want a deadline error", err)
		}
	})
}

// TestVMPackages runs each guestPackages entry inside its own VM and
// reports each of its top-level tests as a subtest here.
func TestVMPackages(t *testing.T) {
	needVM(t)
	root := testutil.RepoRoot()
	for _, gp := range guestPackages {
		name := strings.Trim(strings.ReplaceAll(gp.Pkg, "/", "_"), "._")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			needKernel(t, gp.Needs...)
			bin := buildGuestTest(t, gp.Pkg, name)
			var extra []File
			var env []string
			if gp.Prepare != nil {
				extra, env = gp.Prepare(t, t.TempDir())
			}
			run := gp.Run
			if run == "" {
				run = "."
			}
			pkgDir := "/src/" + strings.TrimPrefix(gp.Pkg, "./")
			files := []File{
				{Path: "/tests/" + name + ".test", Src: bin},
				{Path: pkgDir, Mode: fs.ModeDir | 0o755},
			}
			if st, err := os.Stat(filepath.Join(root, gp.Pkg, "testdata")); err == nil && st.IsDir() {
				files = append(files, File{Path: pkgDir + "/testdata", Src: filepath.Join(root, gp.Pkg, "testdata")})
			}
			cfg := Config{
				Init:  testutil.Binary(t),
				Files: append(files, extra...),
				Env:   append([]string{"NSINIT_IN_VM=1", "NSINIT_BIN=/bin/nsinit"}, env...),
				// Like go test: the package directory is the working directory.
				Cmd: []string{"/bin/sh", "-c", `cd "$1" && shift && exec "$@"`, "sh", pkgDir,
					"/tests/" + name + ".test", "-test.v", "-test.count=1", "-test.timeout=" + guestTestTimeout.String(), "-test.run", run},
				Timeout:  guestTestTimeout + time.Minute,
				MemoryMB: gp.MemoryMB,
			}
			res, err := boot(t, cfg)
			if err != nil {
				t.Fatal(err)
			}
			results := parseTestOutput(res.Console)
			for _, r := range results {
				t.Run(r.name, func(t *testing.T) {
					switch r.verdict {
					case "FAIL":
						t.Errorf("failed in the VM:\n%s", r.output)
					case "SKIP":
						t.Skipf("skipped in the VM:\n%s", r.output)
					}
				})
			}
			if res.Status != 0 || len(results) == 0 {
				t.Fatalf("%s in the VM: status %d, %d tests reported\n--- guest console ---\n%s", gp.Pkg, res.Status, len(results), res.Console)
			}
		})
	}
}

// buildGuestTest compiles package pkg's tests (`go test -c`, static) for
// the guest and returns the binary; it skips when pkg has no tests.
func buildGuestTest(t *testing.T, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name+".test")
	build := exec.Command("go", "test", "-c", "-o", bin, pkg)
	build.Dir = testutil.RepoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %s: %v\n%s", pkg, err, out)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s has no test files yet", pkg)
	}
	return bin
}

// testResult is one top-level test of a `-test.v` run.
type testResult struct {
	name, verdict, output string
}

var verdictRE = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) `)

// parseTestOutput collects the top-level verdicts of `-test.v` output and
// the lines logged by each test since its "=== RUN".
func parseTestOutput(console string) []testResult {
	var out []testResult
	logs := map[string]*strings.Builder{}
	current := ""
	s := bufio.NewScanner(strings.NewReader(console))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok && !strings.Contains(name, "/") {
			current = name
			logs[name] = &strings.Builder{}
			continue
		}
		if m := verdictRE.FindStringSubmatch(line); m != nil {
			r := testResult{name: m[2], verdict: m[1]}
			if b := logs[m[2]]; b != nil {
				r.output = b.String()
			}
			out = append(out, r)
			current = ""
			continue
		}
		if b := logs[current]; b != nil {
			b.WriteString(line + "\n")
		}
	}
	return out
}
