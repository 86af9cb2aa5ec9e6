package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelPackage is the Debian metapackage whose dependency names the guest
// kernel: the test VMs boot Debian's kernel, which differs from the dev
// machine's.
const KernelPackage = "linux-image-amd64"

// Kernel is a guest kernel unpacked in the cache.
type Kernel struct {
	Version string // e.g. "6.1.0-56-amd64"
	// Image is what QEMU boots: the uncompressed vmlinux (PVH entry) when
	// it could be extracted, else the bzImage. Under TCG the kernel takes
	// ~4 s to decompress itself, so vmlinux saves that on every boot.
	Image   string
	BzImage string // boot/vmlinuz-VERSION
	Config  string // boot/config-VERSION
}

// DefaultCacheDir is vm-test/.cache in the source tree (gitignored).
func DefaultCacheDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), ".cache")
}

// EnsureKernel returns the guest kernel from cacheDir, downloading and
// unpacking it first when missing: the package is fetched with apt-get
// download and unpacked with dpkg-deb -x into the cache, so nothing on the
// host is installed or changed. $NSINIT_VM_KERNEL, if set, names a kernel
// image to use instead. Safe to call from concurrent processes (flock).
func EnsureKernel(ctx context.Context, cacheDir string) (Kernel, error) {
	if k := os.Getenv("NSINIT_VM_KERNEL"); k != "" {
		if _, err := os.Stat(k); err != nil {
			return Kernel{}, fmt.Errorf("NSINIT_VM_KERNEL: %w", err)
		}
		return Kernel{Version: "custom", Image: k, BzImage: k}, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("kernel cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel cache: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return Kernel{}, fmt.Errorf("kernel cache: lock: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)

	pkg, err := resolveKernelPackage(ctx)
	if err != nil {
		// Offline with a cache: use the newest kernel already unpacked.
		if k, cerr := cachedKernel(cacheDir, ""); cerr == nil {
			return k, nil
		}
		return Kernel{}, err
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	if k, err := cachedKernel(cacheDir, version); err == nil {
		return k, nil
	}
	if err := fetchKernel(ctx, cacheDir, pkg, version); err != nil {
		return Kernel{}, err
	}
	return cachedKernel(cacheDir, version)
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9][^\s]*)`)

// resolveKernelPackage reads the versioned package name from the
// metapackage's dependency, running apt-get update when the lists do not
// know the metapackage (a fresh machine).
func resolveKernelPackage(ctx context.Context) (string, error) {
	for attempt := 0; ; attempt++ {
		out, err := exec.CommandContext(ctx, "apt-cache", "depends", KernelPackage).Output()
		if m := dependsRE.FindSubmatch(out); err == nil && m != nil {
			return string(m[1]), nil
		}
		if attempt > 0 {
			return "", fmt.Errorf("resolve %s: no versioned linux-image dependency in apt-cache output (%v): %q", KernelPackage, err, out)
		}
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return "", fmt.Errorf("resolve %s: apt-get update: %w: %s", KernelPackage, err, out)
		}
	}
}

// cachedKernel finds an unpacked kernel of version ("" = any) in cacheDir.
func cachedKernel(cacheDir, version string) (Kernel, error) {
	pattern := filepath.Join(cacheDir, "linux-*", "boot", "vmlinuz-*")
	if version != "" {
		pattern = filepath.Join(cacheDir, "linux-"+version, "boot", "vmlinuz-"+version)
	}
	m, _ := filepath.Glob(pattern)
	if len(m) == 0 {
		return Kernel{}, fmt.Errorf("no kernel %q in cache %s", version, cacheDir)
	}
	bz := m[len(m)-1]
	v := strings.TrimPrefix(filepath.Base(bz), "vmlinuz-")
	dir := filepath.Dir(bz)
	k := Kernel{Version: v, Image: bz, BzImage: bz, Config: filepath.Join(dir, "config-"+v)}
	if _, err := os.Stat(filepath.Join(dir, "vmlinux")); err == nil {
		k.Image = filepath.Join(dir, "vmlinux")
	}
	return k, nil
}

// fetchKernel downloads pkg and unpacks its boot/ and lib/modules/ into
// cacheDir/linux-VERSION, atomically (temporary directory, then rename).
func fetchKernel(ctx context.Context, cacheDir, pkg, version string) error {
	tmp, err := os.MkdirTemp(cacheDir, "fetch-")
	if err != nil {
		return fmt.Errorf("fetch %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	dl := exec.CommandContext(ctx, "apt-get", "download", pkg)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("fetch %s: apt-get download: %w: %s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("fetch %s: expected one .deb, found %d", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return fmt.Errorf("fetch %s: dpkg-deb -x: %w: %s", pkg, err, out)
	}
	dest := filepath.Join(tmp, "linux-"+version)
	if err := os.MkdirAll(filepath.Join(dest, "lib"), 0o755); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(root, "boot"), filepath.Join(dest, "boot")); err != nil {
		return fmt.Errorf("fetch %s: no boot/ in package: %w", pkg, err)
	}
	// Modules (virtio, 9p, ...) are kept for scenarios that load them.
	os.Rename(filepath.Join(root, "lib", "modules"), filepath.Join(dest, "lib", "modules"))
	bz := filepath.Join(dest, "boot", "vmlinuz-"+version)
	if err := extractVmlinux(ctx, bz, filepath.Join(dest, "boot", "vmlinux")); err != nil {
		// Not fatal: the compressed image boots too, only slower.
		fmt.Fprintf(os.Stderr, "vmtest: %v; booting the compressed kernel\n", err)
	}
	if err := os.Rename(dest, filepath.Join(cacheDir, "linux-"+version)); err != nil {
		return fmt.Errorf("fetch %s: %w", pkg, err)
	}
	return nil
}

// extractVmlinux unpacks the ELF kernel out of a bzImage. The setup header
// gives the payload's place (payload_offset at 0x248, relative to the
// protected-mode code after the setup sectors); Debian compresses it with
// xz, decompressed here by the xz tool (--single-stream stops before the
// size trailer).
func extractVmlinux(ctx context.Context, bzImage, out string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return fmt.Errorf("extract vmlinux: %s is not a bzImage", bzImage)
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(b[0x248:]))
	if off+6 > len(b) || !bytes.HasPrefix(b[off:], []byte("\xfd7zXZ\x00")) {
		return fmt.Errorf("extract vmlinux: payload of %s is not xz", bzImage)
	}
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	defer os.Remove(out + ".tmp")
	xz := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	xz.Stdin = bytes.NewReader(b[off:])
	w := bufio.NewWriter(f)
	xz.Stdout = w
	var stderr bytes.Buffer
	xz.Stderr = &stderr
	err = xz.Run()
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("extract vmlinux: xz: %w: %s", err, stderr.Bytes())
	}
	if !hasMagic(out+".tmp", "\x7fELF") {
		return errors.New("extract vmlinux: xz output is not an ELF file")
	}
	return os.Rename(out+".tmp", out)
}

func hasMagic(file, magic string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, len(magic))
	n, _ := f.Read(b)
	return string(b[:n]) == magic
}

// Builtin reports whether the kernel's config has option built in
// (CONFIG_X=y). It returns an error when the config is unknown (a custom
// kernel from NSINIT_VM_KERNEL): the caller then cannot tell.
func (k Kernel) Builtin(option string) (bool, error) {
	if k.Config == "" {
		return false, fmt.Errorf("kernel %s: no config to check %s", k.Image, option)
	}
	b, err := os.ReadFile(k.Config)
	if err != nil {
		return false, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	return bytes.Contains(b, []byte("\n"+option+"=y\n")), nil
}
