package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// progress shows how far a long dump or restore is, on stderr: tasks done
// out of the total and the rate. On a terminal it rewrites one line, and
// only once the work has taken longer than showAfter (a quick command
// prints nothing); elsewhere it is off unless --progress asked for it, and
// then prints a line each step.
type progress struct {
	name    string
	tty     bool
	on      bool
	start   time.Time
	shown   bool
	lastLen int
	// fullVerb is the step whose completion ends the count; full is its
	// line once every task is done.
	fullVerb, full string
}

const showAfter = 500 * time.Millisecond

func newProgress(name, fullVerb string, asked bool) *progress {
	tty := isTerminal(2)
	return &progress{name: name, fullVerb: fullVerb, tty: tty, on: tty || asked, start: time.Now()}
}

// isTerminal says whether fd is a terminal.
func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

// update shows "verb done/total tasks (rate/s)"; total 0 means unknown.
func (p *progress) update(verb string, done, total int) {
	if !p.on {
		return
	}
	el := time.Since(p.start)
	if p.tty && !p.shown && el < showAfter {
		return
	}
	var line string
	if total > 0 && done == total && p.full != "" {
		// All there: the rate stays the one of the work, the time goes on
		// (a restore verifies and starts its tasks afterwards).
		line = p.full + "; then " + el.Round(10*time.Millisecond).String()
	} else {
		line = p.name + ": " + verb + " " + fmt.Sprint(done)
		if total > 0 {
			line += fmt.Sprintf("/%d", total)
		}
		line += " tasks"
		if el > 0 && done > 0 {
			line += fmt.Sprintf(" (%.0f/s, %v)", float64(done)/el.Seconds(), el.Round(10*time.Millisecond))
		}
		if total > 0 && done == total && verb == p.fullVerb {
			p.full = line
		}
	}
	p.shown = true
	if !p.tty {
		fmt.Fprintln(os.Stderr, line)
		return
	}
	pad := ""
	for i := len(line); i < p.lastLen; i++ {
		pad += " "
	}
	p.lastLen = len(line)
	fmt.Fprint(os.Stderr, "\r"+line+pad)
}

// done ends the terminal line, if one was shown.
func (p *progress) done() {
	if p.tty && p.shown {
		fmt.Fprintln(os.Stderr)
		p.shown = false
	}
}
