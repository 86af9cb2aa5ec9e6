package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Status is what nsinit uses of /proc/PID/status. Every NS* vector runs
// outermost first (from the procfs's pid namespace down to the task's own).
type Status struct {
	Name      string
	State     byte // R, S, D, T, t, Z, X, ...
	Tgid      int
	Pid       int
	PPid      int
	TracerPid int
	Threads   int
	// NStgid, NSpid, NSpgid, NSsid: one column per level. NSpgid/NSsid are
	// 0 at levels where the leader has no pid (it lives in an ancestor
	// namespace).
	NStgid, NSpid, NSpgid, NSsid []int
	UID, GID                     [4]uint32 // real, effective, saved, fs
	Groups                       []uint32
	CapInh, CapPrm, CapEff       uint64
	CapBnd, CapAmb               uint64
	// Signal sets, bit n-1 for signal n: SigPnd is the thread's own queue,
	// ShdPnd the process's shared one.
	SigPnd, ShdPnd, SigBlk, SigIgn, SigCgt uint64
	Umask                                  uint32
}

// ParseStatus parses the text of /proc/PID/status. It insists on the fields
// nsinit depends on (State, PPid, NSpid, NStgid, NSpgid, NSsid, Uid, Gid),
// so a kernel without them is an error rather than a silently wrong dump.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	var seen uint
	const (
		fState = 1 << iota
		fPPid
		fNSpid
		fNStgid
		fNSpgid
		fNSsid
		fUid
		fGid
		fAll = 1<<iota - 1
	)
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		if string(k) == "Name" {
			// The name may begin with blanks: cut the one tab only.
			s.Name = unescapeName(bytes.TrimPrefix(v, []byte{'\t'}))
			continue
		}
		v = bytes.TrimLeft(v, " \t")
		var err error
		switch string(k) {
		case "State":
			if len(v) == 0 {
				err = errors.New("empty")
			} else {
				s.State, seen = v[0], seen|fState
			}
		case "Tgid":
			s.Tgid, err = atoi(v)
		case "Pid":
			s.Pid, err = atoi(v)
		case "PPid":
			s.PPid, err = atoi(v)
			seen |= fPPid
		case "TracerPid":
			s.TracerPid, err = atoi(v)
		case "Threads":
			s.Threads, err = atoi(v)
		case "NStgid":
			s.NStgid, err = intList(v)
			seen |= fNStgid
		case "NSpid":
			s.NSpid, err = intList(v)
			seen |= fNSpid
		case "NSpgid":
			s.NSpgid, err = intList(v)
			seen |= fNSpgid
		case "NSsid":
			s.NSsid, err = intList(v)
			seen |= fNSsid
		case "Uid":
			err = uint4(v, &s.UID)
			seen |= fUid
		case "Gid":
			err = uint4(v, &s.GID)
			seen |= fGid
		case "Groups":
			s.Groups, err = uintList(v)
		case "CapInh":
			s.CapInh, err = hex64(v)
		case "CapPrm":
			s.CapPrm, err = hex64(v)
		case "CapEff":
			s.CapEff, err = hex64(v)
		case "CapBnd":
			s.CapBnd, err = hex64(v)
		case "CapAmb":
			s.CapAmb, err = hex64(v)
		case "SigPnd":
			s.SigPnd, err = hex64(v)
		case "ShdPnd":
			s.ShdPnd, err = hex64(v)
		case "SigBlk":
			s.SigBlk, err = hex64(v)
		case "SigIgn":
			s.SigIgn, err = hex64(v)
		case "SigCgt":
			s.SigCgt, err = hex64(v)
		case "Umask":
			var n uint64
			n, err = strconv.ParseUint(string(v), 8, 32)
			s.Umask = uint32(n)
		}
		if err != nil {
			return Status{}, fmt.Errorf("field %s %q: %w", k, v, err)
		}
	}
	if seen != fAll {
		return Status{}, fmt.Errorf("missing fields (have mask %#x of %#x): State, PPid, NSpid, NStgid, NSpgid, NSsid, Uid, Gid are required", seen, fAll)
	}
	n := len(s.NSpid)
	if n == 0 || len(s.NStgid) != n || len(s.NSpgid) != n || len(s.NSsid) != n {
		return Status{}, fmt.Errorf("NS* vectors disagree: NSpid %v NStgid %v NSpgid %v NSsid %v", s.NSpid, s.NStgid, s.NSpgid, s.NSsid)
	}
	return s, nil
}

// unescapeName undoes status's escaping of the command name: the kernel
// (proc_task_name, seq_escape_str with only "\n\\") writes a newline as
// `\n` and a backslash as `\\`, every other byte as is (tab, ':', '/',
// parentheses, non-UTF-8).
func unescapeName(v []byte) string {
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v)
	}
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
			if v[i] == 'n' {
				out = append(out, '\n')
				continue
			}
		}
		out = append(out, v[i])
	}
	return string(out)
}

// Stat is what nsinit uses of /proc/PID/stat.
type Stat struct {
	Comm    string
	State   byte
	PPid    int
	PGrp    int
	Session int
	// Flags is field 9, the kernel's task flags (PF_*): PFExiting tells a
	// task that is past the point of no return in do_exit.
	Flags uint64
	// NumThreads is field 20: the threads in /proc/PID/task.
	NumThreads int
	StartTime  uint64 // field 22, clock ticks after boot: with the pid, an identity
	// ExitCode is field 52: a zombie's raw wait status (exit code << 8, or
	// the signal | 0x80 for a core dump), 0 for a live task.
	ExitCode int
	// MM is the address space's layout (fields 26-28 and 45-51); zero for
	// a kernel thread, a zombie, or a reader without ptrace access to the
	// task (the kernel prints 0 then).
	MM MMLayout
}

// MMLayout is the layout of a task's address space as stat shows it: the
// code, the main stack's start, the data and brk areas, and arguments and
// environment.
type MMLayout struct {
	StartCode, EndCode, StartStack uint64 // fields 26, 27, 28
	StartData, EndData, StartBrk   uint64 // fields 45, 46, 47
	ArgStart, ArgEnd               uint64 // fields 48, 49
	EnvStart, EnvEnd               uint64 // fields 50, 51
}

// PFExiting is PF_EXITING in Stat.Flags: the task has begun do_exit (its
// exit tracepoint may already have fired) though /proc may still show it
// running or sleeping until it turns zombie.
const PFExiting = 0x4

// ParseStat parses /proc/PID/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted from its last ')'.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.IndexByte(b, '(')
	cl := bytes.LastIndexByte(b, ')')
	if open < 0 || cl < open {
		return Stat{}, errors.New("no (comm)")
	}
	f := bytes.Fields(b[cl+1:])
	// f[0] is field 3; field 52 is f[49].
	if len(f) < 50 {
		return Stat{}, fmt.Errorf("%d fields after comm, need 50 (field 52 exit_code)", len(f))
	}
	var s Stat
	s.Comm = string(b[open+1 : cl])
	if len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("bad state %q", f[0])
	}
	s.State = f[0][0]
	var err error
	if s.PPid, err = atoi(f[1]); err != nil {
		return Stat{}, fmt.Errorf("field 4: %w", err)
	}
	if s.PGrp, err = atoi(f[2]); err != nil {
		return Stat{}, fmt.Errorf("field 5: %w", err)
	}
	if s.Session, err = atoi(f[3]); err != nil {
		return Stat{}, fmt.Errorf("field 6: %w", err)
	}
	if s.Flags, err = strconv.ParseUint(string(f[6]), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("field 9: %w", err)
	}
	if s.NumThreads, err = atoi(f[17]); err != nil {
		return Stat{}, fmt.Errorf("field 20: %w", err)
	}
	if s.StartTime, err = strconv.ParseUint(string(f[19]), 10, 64); err != nil {
		return Stat{}, fmt.Errorf("field 22: %w", err)
	}
	if s.ExitCode, err = atoi(f[49]); err != nil {
		return Stat{}, fmt.Errorf("field 52: %w", err)
	}
	for _, d := range []struct {
		field int
		dst   *uint64
	}{
		{26, &s.MM.StartCode}, {27, &s.MM.EndCode}, {28, &s.MM.StartStack},
		{45, &s.MM.StartData}, {46, &s.MM.EndData}, {47, &s.MM.StartBrk},
		{48, &s.MM.ArgStart}, {49, &s.MM.ArgEnd}, {50, &s.MM.EnvStart}, {51, &s.MM.EnvEnd},
	} {
		if *d.dst, err = strconv.ParseUint(string(f[d.field-3]), 10, 64); err != nil {
			return Stat{}, fmt.Errorf("field %d: %w", d.field, err)
		}
	}
	return s, nil
}

func atoi(b []byte) (int, error) {
	n := 0
	if len(b) == 0 {
		return 0, errors.New("empty number")
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
		if len(b) == 0 {
			return 0, errors.New("bad number")
		}
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", b)
		}
		n = n*10 + int(c-'0')
		if n > 1<<40 {
			return 0, fmt.Errorf("number %q out of range", b)
		}
	}
	if neg {
		n = -n
	}
	return n, nil
}

func intList(v []byte) ([]int, error) {
	f := bytes.Fields(v)
	out := make([]int, len(f))
	for i, x := range f {
		n, err := atoi(x)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

func uintList(v []byte) ([]uint32, error) {
	f := bytes.Fields(v)
	if len(f) == 0 {
		return nil, nil
	}
	out := make([]uint32, len(f))
	for i, x := range f {
		n, err := strconv.ParseUint(string(x), 10, 32)
		if err != nil {
			return nil, err
		}
		out[i] = uint32(n)
	}
	return out, nil
}

func uint4(v []byte, dst *[4]uint32) error {
	l, err := uintList(v)
	if err != nil {
		return err
	}
	if len(l) != 4 {
		return fmt.Errorf("want 4 ids, got %d", len(l))
	}
	copy(dst[:], l)
	return nil
}

func hex64(v []byte) (uint64, error) {
	return strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
}

// StatusField returns the value of "Key:\tvalue" in a /proc/PID/status
// text, blanks collapsed to one space, "" when absent. Unlike ParseStatus
// it insists on nothing: for a quick look at one field of a task that may
// be exiting (a zombie's status lacks some lines).
func StatusField(status []byte, key string) string {
	for len(status) > 0 {
		var line []byte
		if i := bytes.IndexByte(status, '\n'); i >= 0 {
			line, status = status[:i], status[i+1:]
		} else {
			line, status = status, nil
		}
		if k, v, ok := bytes.Cut(line, []byte{':'}); ok && string(k) == key {
			return string(bytes.Join(bytes.Fields(v), []byte{' '}))
		}
	}
	return ""
}

// StatState is the state letter of a /proc/PID/stat text (read after the
// command, which may contain spaces and parentheses), 0 if there is none.
func StatState(stat []byte) byte {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return 0
	}
	return stat[i+2]
}
