package cliflag

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

type opts struct {
	pid          int
	dir          string
	stopped, grp bool
	verbose      int
	codes        []string
	timeout      time.Duration
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func newSet(o *opts) (*Set, *bytes.Buffer, *bytes.Buffer) {
	s := New("nsinit test", "nsinit test -t PID -D DIR [--leave-stopped]", "")
	s.Int(&o.pid, "t,tree", "PID", "root pid")
	s.String(&o.dir, "D,images-dir", "DIR", "image directory")
	s.Bool(&o.stopped, "s,leave-stopped", "leave it stopped")
	s.Bool(&o.grp, "g", "group")
	s.Count(&o.verbose, "v,verbose", "more output")
	s.Var((*list)(&o.codes), "e", "CODE", "code")
	o.timeout = time.Second
	s.Duration(&o.timeout, "timeout", "D", "deadline")
	s.SetVersion("1.2.3")
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	return s, &out, &errb
}

func TestSpellings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want opts
		rest []string
	}{
		{[]string{"-t", "5", "-D", "d"}, opts{pid: 5, dir: "d"}, nil},
		{[]string{"-t5", "-Dd"}, opts{pid: 5, dir: "d"}, nil},
		{[]string{"--tree", "5", "--images-dir=d"}, opts{pid: 5, dir: "d"}, nil},
		{[]string{"-tree", "5", "-images-dir", "d"}, opts{pid: 5, dir: "d"}, nil},
		{[]string{"--tree=5"}, opts{pid: 5}, nil},
		{[]string{"-sg"}, opts{stopped: true, grp: true}, nil},
		{[]string{"-sgt", "7"}, opts{stopped: true, grp: true, pid: 7}, nil},
		{[]string{"-sgt7"}, opts{stopped: true, grp: true, pid: 7}, nil},
		{[]string{"--leave-stopped"}, opts{stopped: true}, nil},
		{[]string{"-v"}, opts{verbose: 1}, nil},
		{[]string{"-vvv"}, opts{verbose: 3}, nil},
		{[]string{"-v", "-v"}, opts{verbose: 2}, nil},
		{[]string{"-v4"}, opts{verbose: 4}, nil},
		{[]string{"--verbose=2"}, opts{verbose: 2}, nil},
		{[]string{"-gv2"}, opts{grp: true, verbose: 2}, nil},
		{[]string{"-e", "1", "-e143", "-e=2"}, opts{codes: []string{"1", "143", "2"}}, nil},
		{[]string{"--timeout", "3s"}, opts{timeout: 3 * time.Second}, nil},
		// The first positional argument ends the options; "--" too.
		{[]string{"-s", "cmd", "-g"}, opts{stopped: true}, []string{"cmd", "-g"}},
		{[]string{"-s", "--", "-g"}, opts{stopped: true}, []string{"-g"}},
		{[]string{"-s", "--", "a", "--", "b"}, opts{stopped: true}, []string{"a", "--", "b"}},
		// A value that looks like a flag is still the value.
		{[]string{"-D", "-s"}, opts{dir: "-s"}, nil},
	} {
		var o opts
		s, _, errb := newSet(&o)
		if code, stop := s.Parse(tc.args); stop {
			t.Errorf("%q: stopped with %d: %s", tc.args, code, errb)
			continue
		}
		if tc.want.timeout == 0 {
			tc.want.timeout = time.Second
		}
		if !reflect.DeepEqual(o, tc.want) {
			t.Errorf("%q: got %+v, want %+v", tc.args, o, tc.want)
		}
		if got := s.Args(); len(got) != len(tc.rest) || (len(got) > 0 && !reflect.DeepEqual(got, tc.rest)) {
			t.Errorf("%q: args %q, want %q", tc.args, got, tc.rest)
		}
	}
}

func TestInterspersed(t *testing.T) {
	var o opts
	s, _, _ := newSet(&o)
	s.Interspersed = true
	if _, stop := s.Parse([]string{"file", "-s", "other", "--", "-g"}); stop {
		t.Fatal("stopped")
	}
	if !o.stopped || o.grp || !reflect.DeepEqual(s.Args(), []string{"file", "other", "-g"}) {
		t.Fatalf("got %+v args %q", o, s.Args())
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help", "-sh"} {
		var o opts
		s, out, errb := newSet(&o)
		code, stop := s.Parse([]string{arg})
		if !stop || code != 0 || errb.Len() != 0 {
			t.Errorf("%s: stop %v code %d stderr %q", arg, stop, code, errb)
		}
		help := out.String()
		for _, want := range []string{
			"usage: nsinit test -t PID -D DIR [--leave-stopped]\n",
			"  -t, --tree PID", "  -s, --leave-stopped", "  -v, --verbose", "  -h, --help",
			"--timeout D", "(default 1s)", "  -V, --version",
		} {
			if !strings.Contains(help, want) {
				t.Errorf("%s: help lacks %q:\n%s", arg, want, help)
			}
		}
		if strings.Contains(help, " -tree") || strings.Contains(help, " -leave") {
			t.Errorf("help spells a long option with one dash:\n%s", help)
		}
	}
	for _, arg := range []string{"-V", "--version"} {
		var o opts
		s, out, _ := newSet(&o)
		if code, stop := s.Parse([]string{arg}); !stop || code != 0 || out.String() != "nsinit 1.2.3\n" {
			t.Errorf("%s: stop %v code %d out %q", arg, stop, code, out)
		}
	}
}

func TestErrors(t *testing.T) {
	for _, args := range [][]string{{"-x"}, {"--nope"}, {"-sx"}, {"-t", "x"}, {"-t"}, {"-vx"}, {"--timeout", "soon"}} {
		var o opts
		s, out, errb := newSet(&o)
		code, stop := s.Parse(args)
		if !stop || code != 2 || out.Len() != 0 {
			t.Errorf("%q: stop %v code %d stdout %q", args, stop, code, out)
		}
		if !strings.HasPrefix(errb.String(), "nsinit test: ") || !strings.Contains(errb.String(), "usage: nsinit test") {
			t.Errorf("%q: stderr %q", args, errb)
		}
	}
}

// TestErrorSpelling: errors name options as the help does.
func TestErrorSpelling(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tree", "x"}, `invalid value "x" for --tree: not an integer`},
		{[]string{"-t", "x"}, `invalid value "x" for -t: not an integer`},
		{[]string{"--nope"}, "unknown option --nope"},
		{[]string{"-t"}, "-t needs a value"},
		{[]string{"-s", "--images-dir"}, "--images-dir needs a value"},
		{[]string{"-gt"}, "-t needs a value"},
	} {
		var o opts
		s, _, errb := newSet(&o)
		s.Parse(tc.args)
		if first, _, _ := strings.Cut(errb.String(), "\n"); first != "nsinit test: "+tc.want {
			t.Errorf("%q: %q, want %q", tc.args, first, tc.want)
		}
	}
}
