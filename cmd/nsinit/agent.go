package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/nsinit/nsinit/agent"
)

func init() { registerHidden("agent", runAgent) }

// runAgent is the payload of a restored nsinit agent (`nsinit restore` execs
// it as the task that was an agent in the image):
//
//	nsinit agent --adopt PID [--keep PID,PID...] [--control-fd FD] [init options]
//
// It adopts its restored main child instead of starting a command and never
// reaps the image's zombies (--keep, pids in its own namespace). FD is its
// end of the agent-protocol socket pair (proto/agent.proto): once its own Go
// runtime threads exist it answers the restorer, which has it put its
// namespace's ns_last_pid back to the image's value (those threads took
// pids after the cursor the restorer had set; they are runtime-owned and
// not part of the image).
func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	adopt := fs.Int("adopt", 0, "restored child `pid` to supervise")
	keep := fs.String("keep", "", "comma-separated `pids` of image zombies never to reap")
	controlFD := fs.Int("control-fd", -1, "inherited `fd` of the agent-protocol socket to the restorer")
	// The original agent's init options, carried over by the restorer.
	cfg := agent.Config{Keep: map[int]bool{}}
	apply := initFlags(fs, &cfg)
	fs.Bool("v", false, "")
	if err := fs.Parse(args); err != nil || *adopt <= 0 || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: nsinit agent --adopt PID [--keep PID,...] [--control-fd FD] [init options]")
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
	if *controlFD >= 0 {
		// The runtime starts threads as the agent starts up, each taking a
		// pid of this namespace: serve the restorer once the supervisor is
		// set up, so its cursor is written after them. Threads started
		// later move the cursor, as the original agent's did.
		conn, err := agent.OpenParentConn(*controlFD)
		if err != nil {
			fmt.Fprintf(os.Stderr, "nsinit agent: %v\n", err)
			return agent.ExitInitFailure
		}
		cfg.Started = func() error {
			go func() {
				defer conn.Close()
				if err := agent.ServeRestore(conn); err != nil && !errors.Is(err, io.EOF) {
					fmt.Fprintf(os.Stderr, "nsinit agent: restorer connection: %v\n", err)
				}
			}()
			return nil
		}
	}
	return agent.Run(cfg)
}
