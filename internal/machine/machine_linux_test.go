package machine

import (
	"os"
	"testing"
)

// TestIsKernelThread reads the real /proc: pid 2 is kthreadd on a machine
// (and in a VM); this test process is not a kernel thread.
func TestIsKernelThread(t *testing.T) {
	self, err := IsKernelThread("/proc", os.Getpid())
	if err != nil || self {
		t.Fatalf("IsKernelThread(self) = %v, %v, want false", self, err)
	}
	comm, err := os.ReadFile("/proc/2/comm")
	if err != nil || string(comm) != "kthreadd\n" {
		t.Skipf("pid 2 is not kthreadd here (%q, %v): not the initial pid namespace", comm, err)
	}
	k, err := IsKernelThread("/proc", 2)
	if err != nil || !k {
		t.Fatalf("IsKernelThread(kthreadd) = %v, %v, want true", k, err)
	}
}

func TestParseDebugExit(t *testing.T) {
	for cmdline, want := range map[string]int64{
		"console=ttyS0 nsinit.debugexit=0xf4 quiet\n": 0xf4,
		"nsinit.debugexit=244":                        244,
		"console=ttyS0":                               0,
		"nsinit.debugexit=zz":                         0,
		"nsinit.debugexit=0x10000":                    0,
	} {
		got, ok := parseDebugExit(cmdline)
		if ok != (want != 0) || got != want {
			t.Errorf("parseDebugExit(%q) = %#x, %v, want %#x", cmdline, got, ok, want)
		}
	}
}

func TestLoadCmdAndEnv(t *testing.T) {
	dir := t.TempDir()
	args, err := loadCmd(dir+"/missing", []string{"a"})
	if err != nil || len(args) != 1 || args[0] != "a" {
		t.Fatalf("missing cmd file: %q, %v", args, err)
	}
	os.WriteFile(dir+"/cmd", []byte("-s\x00--\x00/bin/sh\x00-c\x00echo 'a b'\x00"), 0o644)
	args, err = loadCmd(dir+"/cmd", nil)
	want := []string{"-s", "--", "/bin/sh", "-c", "echo 'a b'"}
	if err != nil || len(args) != len(want) {
		t.Fatalf("loadCmd = %q, %v, want %q", args, err, want)
	}
	for i := range want {
		if args[i] != want[i] {
			t.Fatalf("loadCmd = %q, want %q", args, want)
		}
	}
	os.WriteFile(dir+"/empty", nil, 0o644)
	if _, err := loadCmd(dir+"/empty", nil); err == nil {
		t.Error("empty command file accepted")
	}
	t.Setenv("NSINIT_T_A", "")
	t.Setenv("NSINIT_T_B", "")
	os.WriteFile(dir+"/env", []byte("NSINIT_T_A=1\nNSINIT_T_B=x=y\x00"), 0o644)
	if err := loadEnv(dir + "/env"); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("NSINIT_T_A") != "1" || os.Getenv("NSINIT_T_B") != "x=y" {
		t.Errorf("env not loaded: A=%q B=%q", os.Getenv("NSINIT_T_A"), os.Getenv("NSINIT_T_B"))
	}
	os.WriteFile(dir+"/badenv", []byte("NOEQUALS\n"), 0o644)
	if err := loadEnv(dir + "/badenv"); err == nil {
		t.Error("bad env entry accepted")
	}
}

// TestMachineInitNotPID1: outside PID 1 nothing is touched.
func TestMachineInitNotPID1(t *testing.T) {
	args, finish, err := Init([]string{"--", "x"})
	if err != nil || finish != nil || len(args) != 2 {
		t.Fatalf("Init as pid %d = %q, finish=%v, %v", os.Getpid(), args, finish != nil, err)
	}
}
