package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nsinit/nsinit/agent"
)

func init() { registerHidden("agent", runAgent) }

// runAgent is the payload of a restored nsinit agent (`nsinit restore` execs
// it as the task that was an agent in the image):
//
//	nsinit agent --adopt PID [--keep PID,PID...] [--ns-last-pid N]
//
// It adopts its restored main child instead of starting a command, never
// reaps the image's zombies (--keep, pids in its own namespace) and, once
// its own Go runtime threads exist, puts its namespace's ns_last_pid back
// to the image's value: those threads took pids after the cursor the
// restorer had set (they are runtime-owned and not part of the image).
func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	adopt := fs.Int("adopt", 0, "restored child `pid` to supervise")
	keep := fs.String("keep", "", "comma-separated `pids` of image zombies never to reap")
	lastPID := fs.Int("ns-last-pid", 0, "ns_last_pid to restore once running (0: leave it)")
	// The original agent's init options, carried over by the restorer.
	cfg := agent.Config{Keep: map[int]bool{}}
	apply := initFlags(fs, &cfg)
	fs.Bool("v", false, "")
	if err := fs.Parse(args); err != nil || *adopt <= 0 || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: nsinit agent --adopt PID [--keep PID,...] [--ns-last-pid N] [init options]")
		return 2
	}
	if err := apply(); err != nil {
		fmt.Fprintf(os.Stderr, "nsinit agent: %v\n", err)
		return 2
	}
	cfg.Adopt = *adopt
	for _, s := range strings.Split(*keep, ",") {
		if s == "" {
			continue
		}
		p, err := strconv.Atoi(s)
		if err != nil || p <= 0 {
			fmt.Fprintf(os.Stderr, "nsinit agent: bad --keep pid %q\n", s)
			return 2
		}
		cfg.Keep[p] = true
	}
	if *lastPID > 0 {
		// The runtime starts threads as the agent starts up, each taking a
		// pid of this namespace at the cursor: once the supervisor is set
		// up, write the image's cursor. Threads it starts later move the
		// cursor, as the original agent's did.
		cfg.Started = func() error {
			if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(*lastPID)), 0); err != nil {
				return fmt.Errorf("agent: restore ns_last_pid %d: %w", *lastPID, err)
			}
			return nil
		}
	}
	return agent.Run(cfg)
}
