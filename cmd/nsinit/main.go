// Command nsinit is an init for pid namespaces and a checkpoint/restore tool
// for process trees that span nested pid namespaces.
//
//	nsinit [options] -- CMD [ARGS...]     run CMD as PID 1 (or subreaper)
//	nsinit dump -t PID -D DIR             record a tree into an image
//	nsinit restore -D DIR                 re-create it with the same pids
//	nsinit show DIR|FILE                  print an image as JSON (--raw: protojson)
//	nsinit encode -i JSON -D DIR          turn show --raw's JSON back into an image
//	nsinit check -t PID -D DIR            compare an image with a live tree
//	nsinit trace -t PID                   print fork/exit/exec of a tree as they happen (eBPF)
//
// This package only parses flags and wires packages together; each
// subcommand lives in a file of its own and registers itself in commands.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/nsinit/nsinit/agent"
	"github.com/nsinit/nsinit/internal/cliflag"
	"github.com/nsinit/nsinit/internal/earlyinit"
	"github.com/nsinit/nsinit/internal/waiter"
)

// versionText is the version line's text: the version, and what the
// binary lacks when it was not built by the Makefile.
func versionText() string {
	miss := earlyinit.MissingLinkSettings()
	if len(miss) == 0 {
		return version
	}
	return version + " (built without the Makefile's linker settings: " + strings.Join(miss, "; ") + ")"
}

// version is stamped in by the Makefile (-X main.version=...).
var version = "dev"

// command is one subcommand: run gets the arguments after its name and
// returns the process exit status.
type command struct {
	summary string
	run     func(args []string) int
	hidden  bool
}

var commands = map[string]command{}

func register(name, summary string, run func(args []string) int) {
	commands[name] = command{summary: summary, run: run}
}

func registerHidden(name string, run func(args []string) int) {
	commands[name] = command{run: run, hidden: true}
}

func main() {
	// A restored task that was waiting for its children, in a binary
	// without the rt0 entry point (which runs this loop before the Go
	// runtime starts): the same loop, in Go.
	if waiter.Marked() {
		waiter.Run()
	}
	os.Exit(dispatch(os.Args[1:]))
}

func dispatch(args []string) int {
	if len(args) > 0 {
		if c, ok := commands[args[0]]; ok {
			return c.run(args[1:])
		}
		switch args[0] {
		case "version":
			fmt.Println("nsinit", versionText())
			return 0
		case "help":
			fs, _ := newInitSet(new(agent.Config), new(int))
			fs.PrintHelp(os.Stdout)
			return 0
		}
	}
	return runInit(args)
}

// newFlags is the command line of a subcommand: with -V/--version, and
// exitUsage for a bad one.
func newFlags(name, usage, about string) *cliflag.Set {
	fs := cliflag.New(name, usage, about)
	fs.UsageStatus = exitUsage
	fs.SetVersion(versionText())
	return fs
}

// commandsHelp lists the subcommands for the top-level help.
func commandsHelp() string {
	var b strings.Builder
	b.WriteString("commands:\n")
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(&b, "  %-8s %s\n", "help", "print this help")
	fmt.Fprintf(&b, "  %-8s %s\n", "version", "print the version")
	return b.String()
}
