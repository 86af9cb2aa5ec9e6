package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsinit/nsinit/internal/cliflag"
)

// diag is where a command's diagnostics go, through log/slog. Errors and
// warnings always reach stderr; the -v log (Info with -v, Debug with -vv or
// CRIU's -v4) goes to stderr too, or only to the log file of -o/--log-file,
// which also gets every error and warning. On stderr the text form is one
// plain line a record ("nsinit dump: ..."); in a file it is slog's
// key=value form with the time; --log-format json makes both JSON.
type diag struct {
	name string
	log  *slog.Logger
	file *os.File // the log file, nil without one
}

// diagOptions are the logging flags dump and restore share.
type diagOptions struct {
	verbose  int    // -v count or level
	file     string // -o/--log-file
	format   string // --log-format: text or json
	progress bool   // --progress: show progress even when stderr is not a terminal
}

// addFlags declares the shared logging flags on fs.
func (o *diagOptions) addFlags(fs *cliflag.Set, what string) {
	fs.String(&o.file, "o,log-file", "FILE", "write the log to FILE (relative: in DIR) and copy errors there")
	fs.String(&o.format, "log-format", "text|json", "log records as text (the default) or as JSON lines")
	fs.Count(&o.verbose, "v,verbosity", what+" (-v: steps; twice, or CRIU's -v4: details)")
	fs.Bool(&o.progress, "progress", "show progress on stderr even when it is not a terminal")
}

// bad says what is wrong with the flags, "" when nothing.
func (o *diagOptions) bad() string {
	if o.format != "" && o.format != "text" && o.format != "json" {
		return fmt.Sprintf("unknown --log-format %q (text or json)", o.format)
	}
	return ""
}

// slogLevel maps the -v count: warnings and errors only, then Info, then
// Debug (-vv; CRIU's -v4 is its debug level too).
func slogLevel(verbose int) slog.Level {
	switch {
	case verbose <= 0:
		return slog.LevelWarn
	case verbose == 1:
		return slog.LevelInfo
	}
	return slog.LevelDebug
}

// openDiag opens the log file, if any (close-on-exec, as os.OpenFile
// opens everything: restored tasks never inherit it). As with CRIU, whose work directory
// defaults to the image directory, a relative log path is taken relative to
// the image directory dir, which mkdir creates if missing (a dump does).
func openDiag(name string, o diagOptions, dir string, mkdir bool) (*diag, error) {
	d := &diag{name: name}
	level := slogLevel(o.verbose)
	if o.file == "" {
		d.log = slog.New(newHandler(os.Stderr, o.format, name, level, false))
		return d, nil
	}
	logFile := o.file
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
	d.log = slog.New(newHandler(f, o.format, name, level, true))
	return d, nil
}

func newHandler(w io.Writer, format, name string, level slog.Level, withTime bool) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if !withTime {
		opts.ReplaceAttr = dropTime
	}
	switch {
	case format == "json":
		return slog.NewJSONHandler(w, opts).WithAttrs([]slog.Attr{slog.String("cmd", name)})
	case withTime:
		return slog.NewTextHandler(w, opts).WithAttrs([]slog.Attr{slog.String("cmd", name)})
	}
	return &plainHandler{w: w, prefix: name + ": ", level: level}
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// plainHandler writes "prefix message key=value ..." lines, as nsinit's
// messages on a terminal always looked.
type plainHandler struct {
	w      io.Writer
	prefix string
	level  slog.Level
	attrs  []slog.Attr
}

func (h *plainHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *plainHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(h.prefix)
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	b.WriteByte('\n')
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *plainHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *plainHandler) WithGroup(string) slog.Handler { return h }

// errorf reports an error or a warning: on stderr and in the log file.
func (d *diag) errorf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	if d.file != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", d.name, msg)
	}
	d.log.Error(msg)
}

// logf logs at -v level (1: Info, 2 and up: Debug): in the log file if
// there is one, else on stderr.
func (d *diag) logf(level int, format string, a ...any) {
	l := slogLevel(level)
	if !d.log.Enabled(context.Background(), l) {
		return
	}
	d.log.Log(context.Background(), l, fmt.Sprintf(format, a...))
}

func (d *diag) close() {
	if d.file != nil {
		d.file.Close()
	}
}
