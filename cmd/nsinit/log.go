package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// diag is where a command's diagnostics go. Errors and warnings always
// reach stderr; the -v log goes to stderr too, or only to the log file of
// -o/--log-file, which also gets a copy of every error and warning.
type diag struct {
	name  string // "nsinit dump"
	level int    // -v count
	file  *os.File
}

// openDiag opens the log file, if any (close-on-exec, as os.OpenFile
// opens everything: restored tasks never inherit it). As with CRIU, whose work directory
// defaults to the image directory, a relative log path is taken relative to
// the image directory dir, which mkdir creates if missing (a dump does).
func openDiag(name string, level int, logFile, dir string, mkdir bool) (*diag, error) {
	d := &diag{name: name, level: level}
	if logFile == "" {
		return d, nil
	}
	if !filepath.IsAbs(logFile) && dir != "" {
		if mkdir {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("log file: %w", err)
			}
		}
		logFile = filepath.Join(dir, logFile)
	}
	f, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	d.file = f
	return d, nil
}

// errorf reports an error or a warning: on stderr and in the log file.
func (d *diag) errorf(format string, a ...any) {
	msg := fmt.Sprintf(d.name+": "+format+"\n", a...)
	os.Stderr.WriteString(msg)
	if d.file != nil {
		d.file.WriteString(msg)
	}
}

// logf logs when -v was given at least level times: in the log file if
// there is one, else on stderr.
func (d *diag) logf(level int, format string, a ...any) {
	if d.level < level {
		return
	}
	msg := fmt.Sprintf(d.name+": "+format+"\n", a...)
	if d.file != nil {
		d.file.WriteString(msg)
	} else {
		os.Stderr.WriteString(msg)
	}
}

func (d *diag) close() {
	if d.file != nil {
		d.file.Close()
	}
}
