// Package vmtest boots a real kernel under QEMU with nsinit as its /init
// and turns what happened inside into a result outside.
//
// Run builds an initramfs (a newc cpio written in Go) holding nsinit as
// /init, busybox, the caller's files and /etc/nsinit/cmd, boots Debian's
// kernel (EnsureKernel) under qemu-system-x86_64 with TCG, and waits for
// the guest to power off. The guest's nsinit (machine.Init) writes
// "NSINIT-DONE status=N" on the second serial port before powering off;
// that marker is the only proof the command finished: a plain QEMU exit
// can also be a kernel panic (panic=-1 with -no-reboot), and a hang is cut
// by the timeout. Either way Run returns an error carrying the console.
//
//	res, err := vmtest.Run(ctx, vmtest.Config{Cmd: []string{"/bin/sh", "-c", "exit 3"}})
//	// res.Status == 3
package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// File is one file put into the guest's initramfs.
type File struct {
	Path string      // absolute path in the guest
	Src  string      // host file to copy (or Data if Src is empty)
	Data []byte      // contents when Src is empty
	Mode fs.FileMode // permissions; 0 means the source's, or 0644 for Data;
	// fs.ModeDir with no Src makes an empty directory
}

// Config describes one boot.
type Config struct {
	// Kernel is the image QEMU boots; empty means EnsureKernel with the
	// default cache (downloaded on first use).
	Kernel string
	// Init is the nsinit binary that becomes /init; empty means
	// $NSINIT_BIN, else bin/nsinit of the source tree.
	Init string
	// InitArgs are nsinit's options before "--" (e.g. "-s").
	InitArgs []string
	// Cmd is what nsinit runs as the machine's command.
	Cmd []string
	// Env is added to the guest's environment (/etc/nsinit/env).
	Env []string
	// Files are added to the initramfs. /bin/busybox (and /bin/sh) come
	// from the host's busybox-static when present.
	Files []File
	// Timeout bounds the whole boot (default 3 minutes).
	Timeout time.Duration
	// MemoryMB is the guest's memory (default 512).
	MemoryMB int
	// Append is added to the kernel command line.
	Append string
	// Console, if set, receives the guest console as it is written.
	Console io.Writer
}

// Result is what a boot that reached its end reported.
type Result struct {
	Status   int           // CMD's status as nsinit reported it
	Console  string        // the guest console (serial 0)
	Duration time.Duration // QEMU start to QEMU exit
}

// ErrNoResult means the guest stopped without reporting a status: a
// kernel panic, an init that exited, or a timeout.
var ErrNoResult = errors.New("guest reported no result")

// Error is a failed boot, with the console for the diagnosis.
type Error struct {
	Reason  string
	Console string
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("vm: %s: %v\n--- guest console (last 4 KiB) ---\n%s", e.Reason, e.Err, tail(e.Console, 4096))
}

func (e *Error) Unwrap() error { return e.Err }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// debugExitPort is QEMU's isa-debug-exit device, also named to the guest
// (nsinit.debugexit=) so nsinit writes its status there: QEMU then exits
// with (status<<1)|1 at once, which cross-checks the marker.
const debugExitPort = 0xf4

var doneRE = regexp.MustCompile(`NSINIT-DONE status=(-?\d+)`)

// Run boots cfg and returns the command's status. The returned error is an
// *Error (wrapping ErrNoResult, a timeout or a QEMU failure) whenever the
// guest did not report a status.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if len(cfg.Cmd) == 0 {
		return Result{}, errors.New("vm: no command")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Minute
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 512
	}
	if cfg.Kernel == "" {
		k, err := EnsureKernel(ctx, DefaultCacheDir())
		if err != nil {
			return Result{}, fmt.Errorf("vm: %w", err)
		}
		cfg.Kernel = k.Image
	}
	if cfg.Init == "" {
		cfg.Init = DefaultInit()
	}
	dir, err := os.MkdirTemp("", "nsinit-vm-")
	if err != nil {
		return Result{}, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := writeInitramfs(initrd, cfg); err != nil {
		return Result{}, fmt.Errorf("vm: initramfs: %w", err)
	}
	resultFile := filepath.Join(dir, "result")

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	appendLine := fmt.Sprintf("console=ttyS0 panic=-1 softlockup_panic=1 no_timer_check quiet nsinit.debugexit=%#x %s", debugExitPort, cfg.Append)
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-m", strconv.Itoa(cfg.MemoryMB),
		// One vCPU, single-threaded TCG: multi-threaded TCG hung the guest
		// with tracepoints attached (docs/kernel.md V1).
		"-smp", "1", "-accel", "tcg,thread=single",
		"-kernel", cfg.Kernel, "-initrd", initrd, "-append", strings.TrimSpace(appendLine),
		"-serial", "stdio", "-serial", "file:"+resultFile,
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=0x04", debugExitPort))
	var console syncBuffer
	qemu.Stdout = &console
	if cfg.Console != nil {
		qemu.Stdout = io.MultiWriter(&console, cfg.Console)
	}
	qemu.Stderr = qemu.Stdout
	qemu.WaitDelay = 5 * time.Second
	start := time.Now()
	runErr := qemu.Run()
	res := Result{Console: console.String(), Duration: time.Since(start)}

	if ctx.Err() != nil {
		return res, &Error{Reason: fmt.Sprintf("no result within %v", cfg.Timeout), Console: res.Console, Err: fmt.Errorf("%w: %w", ErrNoResult, ctx.Err())}
	}
	marker, _ := os.ReadFile(resultFile)
	m := doneRE.FindSubmatch(marker)
	if m == nil {
		reason := "guest stopped without a result"
		if strings.Contains(res.Console, "Kernel panic") {
			reason = "kernel panic"
		}
		if runErr != nil && !isDebugExit(runErr) {
			reason += fmt.Sprintf(" (qemu: %v)", runErr)
		}
		return res, &Error{Reason: reason, Console: res.Console, Err: ErrNoResult}
	}
	res.Status, _ = strconv.Atoi(string(m[1]))
	// isa-debug-exit: QEMU exits with (byte<<1)|1. Only a consistency
	// check: the byte keeps the low 7 bits of the status.
	if ee, ok := runErr.(*exec.ExitError); ok {
		if code := ee.ExitCode(); code&1 == 1 && (code>>1)&0x7f != res.Status&0x7f {
			return res, &Error{Reason: "inconsistent result", Console: res.Console,
				Err: fmt.Errorf("marker status %d, isa-debug-exit code %d", res.Status, code)}
		}
	}
	return res, nil
}

func isDebugExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode()&1 == 1
}

// DefaultInit is $NSINIT_BIN, else bin/nsinit of the source tree.
func DefaultInit() string {
	if p := os.Getenv("NSINIT_BIN"); p != "" {
		return p
	}
	return filepath.Join(filepath.Dir(DefaultCacheDir()), "..", "bin", "nsinit")
}

// Busybox is the host's static busybox, put into every guest.
const Busybox = "/bin/busybox"

// writeInitramfs lays out the guest's root file system.
func writeInitramfs(out string, cfg Config) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	c := newCPIOWriter(f)
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc/nsinit"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("/dev/console", 0o600, 5, 1)
	files := []File{{Path: "/init", Src: cfg.Init}}
	if _, err := os.Stat(Busybox); err == nil {
		files = append(files, File{Path: "/bin/busybox", Src: Busybox})
		c.Symlink("/bin/sh", "busybox")
	}
	c.Symlink("/bin/nsinit", "/init")
	args := append(append(append([]string{}, cfg.InitArgs...), "--"), cfg.Cmd...)
	files = append(files, File{Path: "/etc/nsinit/cmd", Data: []byte(strings.Join(args, "\x00"))})
	if len(cfg.Env) > 0 {
		files = append(files, File{Path: "/etc/nsinit/env", Data: []byte(strings.Join(cfg.Env, "\x00"))})
	}
	for _, fl := range append(files, cfg.Files...) {
		if err := addFile(c, fl); err != nil {
			return err
		}
	}
	if err := c.Close(); err != nil {
		return err
	}
	return f.Close()
}

func addFile(c *cpioWriter, fl File) error {
	if fl.Src == "" && fl.Mode.IsDir() {
		c.Dir(fl.Path, fl.Mode.Perm()|0o700)
		return nil
	}
	if fl.Src == "" {
		mode := fl.Mode
		if mode == 0 {
			mode = 0o644
		}
		c.File(fl.Path, mode, int64(len(fl.Data)), bytes.NewReader(fl.Data))
		return nil
	}
	src, err := os.Open(fl.Src)
	if err != nil {
		return fmt.Errorf("guest file %s: %w", fl.Path, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("guest file %s: %w", fl.Path, err)
	}
	if st.IsDir() {
		return addTree(c, fl.Path, fl.Src)
	}
	mode := fl.Mode
	if mode == 0 {
		mode = st.Mode().Perm()
	}
	c.File(fl.Path, mode, st.Size(), src)
	return nil
}

// addTree copies a host directory (e.g. a package's testdata) recursively.
func addTree(c *cpioWriter, guest, host string) error {
	return filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(host, p)
		g := filepath.Join(guest, rel)
		switch {
		case d.IsDir():
			c.Dir(g, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(g, t)
		case d.Type().IsRegular():
			return addFile(c, File{Path: g, Src: p})
		}
		return nil
	})
}

// syncBuffer is a bytes.Buffer safe for QEMU's writer goroutine and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
