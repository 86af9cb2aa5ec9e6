// Command vmrun boots a command under nsinit as the init of a QEMU test VM
// (Debian's kernel, TCG) and exits with the command's status:
//
//	go run ./vm-test/cmd/vmrun [flags] -- CMD [ARGS...]
//	make vm-run CMD="/bin/sh -c 'cat /proc/1/status'"
//
// The guest has /init (= /bin/nsinit), busybox as /bin/busybox and /bin/sh,
// and every -file. The console is copied to stdout as it comes. A guest
// that stops without reporting a status (kernel panic, timeout) exits 125.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	vmtest "github.com/nsinit/nsinit/vm-test"
)

// files is a repeatable -file HOST[:GUEST] flag.
type files []vmtest.File

func (f *files) String() string { return fmt.Sprint(*f) }
func (f *files) Set(s string) error {
	host, guest, ok := strings.Cut(s, ":")
	if !ok {
		guest = host
	}
	if !strings.HasPrefix(guest, "/") {
		return fmt.Errorf("guest path %q must be absolute", guest)
	}
	*f = append(*f, vmtest.File{Path: guest, Src: host})
	return nil
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var (
		cfg     vmtest.Config
		fl      files
		env     list
		initArg list
	)
	flag.StringVar(&cfg.Kernel, "kernel", "", "kernel image (default: Debian's, cached in vm-test/.cache)")
	flag.StringVar(&cfg.Init, "init", "", "nsinit binary for /init (default: $NSINIT_BIN or bin/nsinit)")
	flag.Var(&fl, "file", "HOST[:GUEST] file or directory to put in the guest (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE for the guest environment (repeatable)")
	flag.Var(&initArg, "init-arg", "nsinit option before -- (repeatable), e.g. -init-arg=-s")
	flag.DurationVar(&cfg.Timeout, "timeout", 3*time.Minute, "give up on the guest after this long")
	flag.IntVar(&cfg.MemoryMB, "m", 512, "guest memory in MiB")
	flag.StringVar(&cfg.Append, "append", "", "extra kernel command line")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: vmrun [flags] -- CMD [ARGS...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	cfg.Cmd = flag.Args()
	if len(cfg.Cmd) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	// `make vm-run CMD="..."` passes one word: split it like a shell would
	// for simple cases, or run it through the guest's sh.
	if len(cfg.Cmd) == 1 && strings.ContainsAny(cfg.Cmd[0], " \t") {
		cfg.Cmd = []string{"/bin/sh", "-c", cfg.Cmd[0]}
	}
	cfg.Files, cfg.Env, cfg.InitArgs = fl, env, initArg
	cfg.Console = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := vmtest.Run(ctx, cfg)
	if err != nil {
		var e *vmtest.Error
		if errors.As(err, &e) {
			// The console was already shown live.
			fmt.Fprintf(os.Stderr, "vmrun: %s: %v\n", e.Reason, e.Err)
		} else {
			fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		}
		os.Exit(125)
	}
	fmt.Fprintf(os.Stderr, "vmrun: status %d after %v\n", res.Status, res.Duration.Round(time.Millisecond))
	os.Exit(res.Status)
}
