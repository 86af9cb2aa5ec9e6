// Package cliflag is nsinit's command-line parser: the standard flag
// package with the spellings CRIU and tini users type.
//
//   - every option may have several names, short and long ("t,tree"):
//     -t 5, -t5, --tree 5, --tree=5 and (Go style) -tree 5 are all accepted;
//   - short flags combine GNU-style: -sg is -s -g, -e143 is -e 143;
//   - a counter (-v) counts its repetitions (-vvv is 3) or takes a number
//     attached (-v4, --verbose=4);
//   - -h and --help print the help on stdout and stop with status 0; a bad
//     flag prints the error and the usage line on stderr, status 2;
//   - with a version set, -V and --version print it and stop with status 0.
//
// Parsing stops at "--" and, unless Interspersed is set, at the first
// argument that is not a flag (the init's command). The help lists each
// option once with all its names, spelled as on the usage line: one dash
// for a letter, two for a word.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set is the options of one command.
type Set struct {
	// Interspersed lets flags follow positional arguments (show FILE --raw);
	// without it the first positional argument ends the flags.
	Interspersed bool
	// UsageStatus is the status Parse and Fail return for a bad command
	// line (0: 2, the usual one).
	UsageStatus int
	// Epilog is printed after the options in the help.
	Epilog string
	// Stdout and Stderr receive the help and the errors (nil: os.Stdout,
	// os.Stderr).
	Stdout, Stderr io.Writer

	name    string // "nsinit dump": prefix of error messages
	usage   string // usage line(s), without "usage: "
	about   string // paragraph after the usage line in the help
	version string
	fs      *flag.FlagSet
	opts    []*option
	byName  map[string]*option
	help    bool
	showVer bool
}

type option struct {
	names  []string // as registered: "t", "tree"
	arg    string   // value placeholder in the help ("PID"); "" for a switch
	help   string
	value  flag.Value
	isBool bool // takes no value (switch or counter)
	count  bool // a counter: -vvv, -v4
	hidden bool
}

// New makes the options of command name (as messages name it, "nsinit
// dump"). usage is the synopsis printed after "usage: " (several lines
// allowed), about an optional paragraph printed under it in the help.
func New(name, usage, about string) *Set {
	s := &Set{name: name, usage: usage, about: about, byName: map[string]*option{}}
	s.fs = flag.NewFlagSet(name, flag.ContinueOnError)
	s.fs.SetOutput(io.Discard)
	s.fs.Usage = func() {}
	s.Bool(&s.help, "h,help", "print this help and exit")
	return s
}

// SetVersion defines -V and --version, which print "nsinit VERSION".
func (s *Set) SetVersion(v string) {
	s.version = v
	s.Bool(&s.showVer, "V,version", "print the version and exit")
}

// Bool defines a switch; its default is *p.
func (s *Set) Bool(p *bool, names, help string) {
	s.add(names, "", help, (*boolValue)(p), true, false)
}

// Count defines a counter: each -v adds one, -v4 or --verbose=4 sets it.
func (s *Set) Count(p *int, names, help string) {
	s.add(names, "", help, (*countValue)(p), true, true)
}

// String defines an option with a value shown as arg in the help.
func (s *Set) String(p *string, names, arg, help string) {
	s.add(names, arg, help, (*stringValue)(p), false, false)
}

// Int defines an integer option.
func (s *Set) Int(p *int, names, arg, help string) {
	s.add(names, arg, help, (*intValue)(p), false, false)
}

// Duration defines a duration option (time.ParseDuration syntax).
func (s *Set) Duration(p *time.Duration, names, arg, help string) {
	s.add(names, arg, help, (*durationValue)(p), false, false)
}

// Var defines an option with a value of its own type (a repeatable list,
// say).
func (s *Set) Var(v flag.Value, names, arg, help string) {
	s.add(names, arg, help, v, false, false)
}

// Hide keeps the option named name out of the help (an accepted spelling
// nobody should be taught).
func (s *Set) Hide(name string) { s.byName[name].hidden = true }

func (s *Set) add(names, arg, help string, v flag.Value, isBool, count bool) {
	o := &option{names: strings.Split(names, ","), arg: arg, help: help, value: v, isBool: isBool, count: count}
	for _, n := range o.names {
		if _, dup := s.byName[n]; dup {
			panic("cliflag: option " + n + " defined twice")
		}
		s.byName[n] = o
		s.fs.Var(v, n, help)
	}
	s.opts = append(s.opts, o)
}

// Parse parses args. stop is true when the command must return code at
// once: 0 after printing the help or the version, UsageStatus (2) after a
// bad flag.
func (s *Set) Parse(args []string) (code int, stop bool) {
	err := s.fs.Parse(s.normalize(args))
	switch {
	case errors.Is(err, flag.ErrHelp) || (err == nil && s.help):
		s.PrintHelp(s.stdout())
		return 0, true
	case err != nil:
		return s.Fail("%s", s.spellError(err)), true
	case s.showVer:
		fmt.Fprintln(s.stdout(), "nsinit", s.version)
		return 0, true
	}
	return 0, false
}

// spellError rewrites the flag package's messages, which name every
// option with one dash ("flag -tree"), with the spelling of the help.
func (s *Set) spellError(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown option " + Spell(name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return Spell(name) + " needs a value"
	}
	for n := range s.byName {
		msg = strings.Replace(msg, "flag -"+n+":", Spell(n)+":", 1)
		msg = strings.Replace(msg, "for -"+n+":", "for "+Spell(n)+":", 1)
	}
	return msg
}

// Args are the positional arguments left after Parse.
func (s *Set) Args() []string { return s.fs.Args() }

// Fail prints "NAME: message", the usage line and where the help is on
// stderr, and returns the status of a usage error (UsageStatus, or 2).
func (s *Set) Fail(format string, a ...any) int {
	w := s.stderr()
	fmt.Fprintf(w, "%s: %s\n", s.name, fmt.Sprintf(format, a...))
	fmt.Fprintf(w, "usage: %s\n(%s --help lists the options)\n", s.usage, s.name)
	if s.UsageStatus != 0 {
		return s.UsageStatus
	}
	return 2
}

// PrintHelp writes the usage line, the about paragraph and every option.
func (s *Set) PrintHelp(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n", s.usage)
	if s.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(s.about, "\n"))
	}
	fmt.Fprintf(w, "\noptions:\n")
	s.PrintOptions(w)
	if s.Epilog != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(s.Epilog, "\n"))
	}
}

// PrintOptions writes one entry per option, -V and -h last: its names as the
// usage line spells them, then its help, wrapped to 80 columns.
func (s *Set) PrintOptions(w io.Writer) {
	const col, width = 24, 80
	var opts, last []*option // -V and -h last
	for _, o := range s.opts {
		if o == s.byName["h"] || o == s.byName["V"] {
			last = append([]*option{o}, last...)
		} else {
			opts = append(opts, o)
		}
	}
	opts = append(opts, last...)
	for _, o := range opts {
		if o.hidden {
			continue
		}
		var names []string
		for _, n := range o.names {
			names = append(names, Spell(n))
		}
		left := "  " + strings.Join(names, ", ")
		if o.arg != "" {
			left += " " + o.arg
		}
		help := o.help
		if f := s.fs.Lookup(o.names[0]); !o.isBool && f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
			help += " (default " + f.DefValue + ")"
		}
		if len(left) >= col-1 {
			fmt.Fprintln(w, left)
			left = ""
		}
		for _, line := range wrap(help, width-col) {
			fmt.Fprintf(w, "%-*s%s\n", col, left, line)
			left = ""
		}
	}
}

// wrap cuts text into lines of at most n bytes, at spaces.
func wrap(text string, n int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		if line != "" && len(line)+1+len(word) > n {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	return append(lines, line)
}

// Spell writes an option name as the help and the usage lines do: "-t",
// "--tree".
func Spell(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func (s *Set) stdout() io.Writer {
	if s.Stdout != nil {
		return s.Stdout
	}
	return os.Stdout
}

func (s *Set) stderr() io.Writer {
	if s.Stderr != nil {
		return s.Stderr
	}
	return os.Stderr
}

// normalize rewrites args into what the flag package parses: clusters of
// short flags split (-sg: -s -g; -e143: -e=143; -v4: -v=4), the
// positional arguments moved after a "--" (all of them when Interspersed,
// else everything from the first one on). Anything it does not recognise
// is passed on unchanged for the flag package to report.
func (s *Set) normalize(args []string) []string {
	var flags, pos []string
	dangling := false // the last flag needs a value and there is none
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			if !s.Interspersed {
				pos = append(pos, args[i:]...)
				break
			}
			pos = append(pos, a)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if o := s.byName[name]; o != nil {
			// A whole name: -t, --tree, -tree, --tree=5.
			flags = append(flags, a)
			if !o.isBool && !hasValue {
				if i+1 == len(args) {
					dangling = true
					break
				}
				i++
				flags = append(flags, args[i])
			}
			continue
		}
		if strings.HasPrefix(a, "--") {
			flags = append(flags, a) // unknown: the flag package says so
			continue
		}
		split, takesNext := s.cluster(a[1:])
		if split == nil {
			flags = append(flags, a)
			continue
		}
		flags = append(flags, split...)
		if takesNext {
			if i+1 == len(args) {
				dangling = true
				break
			}
			i++
			flags = append(flags, args[i])
		}
	}
	if dangling {
		return flags // for the flag package to say the value is missing
	}
	return append(append(flags, "--"), pos...)
}

// cluster splits a group of short flags written after one dash, or returns
// nil if it is not one. takesNext: its last flag needs the next argument
// as its value.
func (s *Set) cluster(group string) (split []string, takesNext bool) {
	for i := 0; i < len(group); i++ {
		o := s.byName[group[i:i+1]]
		if o == nil {
			return nil, false
		}
		flag, rest := "-"+group[i:i+1], group[i+1:]
		switch {
		case o.count && rest != "" && isDigits(rest):
			return append(split, flag+"="+rest), false
		case o.isBool:
			split = append(split, flag)
		case rest != "":
			return append(split, flag+"="+rest), false
		default:
			return append(split, flag), true
		}
	}
	return split, false
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

type boolValue bool

func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not a boolean")
	}
	*b = boolValue(v)
	return nil
}
func (b *boolValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *boolValue) IsBoolFlag() bool { return true }

// countValue is a bool flag to the flag package, so that -v needs no
// value; "true" is one more repetition, a number sets the level.
type countValue int

func (c *countValue) Set(s string) error {
	switch s {
	case "true":
		*c++
		return nil
	case "false":
		*c = 0
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return errors.New("not a level (a number from 0)")
	}
	*c = countValue(n)
	return nil
}
func (c *countValue) String() string   { return strconv.Itoa(int(*c)) }
func (c *countValue) IsBoolFlag() bool { return true }

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("not an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration (like 30s, 2m)")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
