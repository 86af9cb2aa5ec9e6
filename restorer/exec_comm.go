package restorer

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Command names (comm, /proc/PID/comm). A builder that exits (zombie),
// parks (stopped payload) or is a restored thread names itself with
// prctl(PR_SET_NAME) from its record (builder_linux.go: setName). An exec
// payload cannot: execve sets comm to the base name of the path it is
// given (not argv[0], not the resolved /proc/PID/exe), cut to 15 bytes.
// When the recorded name is not that of Exe - the original was exec'd
// through a symlink (a busybox applet) or is a script, or renamed itself -
// the builder execs a symlink named like the task, pointing to Exe, in a
// private directory that lives for the duration of the restore (execLinks).
// /proc/PID/exe still shows the real file and argv is unchanged.

// commLen is the kernel's TASK_COMM_LEN without its NUL.
const commLen = 15

// putComm fills a 16-byte NUL-terminated record; an empty name (not
// recorded) leaves it all zero, which setName skips.
func putComm(dst *[commLen + 1]byte, comm string) {
	*dst = [commLen + 1]byte{}
	copy(dst[:commLen], comm)
}

// threadComm is the recorded name of the thread an OpThread step creates.
func threadComm(p *Plan, s *Step) string {
	if t := p.Procs[s.Actor].Task; t >= 0 {
		for _, th := range p.Tree.Tasks[t].Threads {
			if slices.Equal(th.TIDs, s.PIDs) {
				return th.Comm
			}
		}
	}
	return ""
}

// execComm is the name execve gives a process exec'd through path.
func execComm(path string) string {
	b := filepath.Base(path)
	if len(b) > commLen {
		b = b[:commLen]
	}
	return b
}

// execLinks is the private directory of the exec payload's symlinks,
// created on first need by newBlock - before the restore creates any
// process, so every mount namespace the restore makes (a copy of the
// restorer's) has it - and removed when Execute returns (every payload has
// exec'd by then, or the attempt was rolled back).
type execLinks struct {
	dir   string
	links map[string]string // comm NUL exe -> symlink
	named map[int]string    // the name exec gives a proc whose name is recorded
}

// path is what proc i, named comm, execs to run exe with that name.
func (l *execLinks) path(i int, exe, comm string) (string, error) {
	if len(comm) > commLen {
		comm = comm[:commLen]
	}
	if comm != "" {
		if l.named == nil {
			l.named = map[int]string{}
		}
		l.named[i] = execComm(exe) // unless a link is made below
	}
	if comm == "" || comm == execComm(exe) {
		return exe, nil
	}
	if strings.Contains(comm, "/") || comm == "." || comm == ".." {
		// prctl(PR_SET_NAME) allows any name, but no file is named
		// like this one: exec Exe itself, the name stays its base name.
		return exe, nil
	}
	key := comm + "\x00" + exe
	if p, ok := l.links[key]; ok {
		l.named[i] = comm
		return p, nil
	}
	if l.dir == "" {
		d, err := os.MkdirTemp("", "nsinit-exec-")
		if err != nil {
			// No writable temporary directory (a read-only root, a
			// VM's init): restore anyway, under Exe's name - check
			// reports the names that differ.
			return exe, nil
		}
		l.dir, l.links = d, map[string]string{}
		// Payloads exec after dropping to their own ids: let them
		// through (search only, no listing).
		if err := os.Chmod(d, 0o711); err != nil {
			return "", fmt.Errorf("directory for exec names: %w", err)
		}
	}
	// One subdirectory per link: two tasks may share a name, not an exe.
	sub := filepath.Join(l.dir, strconv.Itoa(len(l.links)))
	if err := os.Mkdir(sub, 0o711); err != nil {
		return "", fmt.Errorf("directory for exec name %q: %w", comm, err)
	}
	if err := os.Chmod(sub, 0o711); err != nil { // despite the umask
		return "", fmt.Errorf("directory for exec name %q: %w", comm, err)
	}
	p := filepath.Join(sub, comm)
	if err := os.Symlink(exe, p); err != nil {
		return "", fmt.Errorf("exec name %q for %s: %w", comm, exe, err)
	}
	l.links[key] = p
	l.named[i] = comm
	return p, nil
}

// remove deletes the directory and its links.
func (l *execLinks) remove() {
	if l.dir != "" {
		_ = os.RemoveAll(l.dir)
		l.dir, l.links, l.named = "", nil, nil
	}
}

// taskComm is the recorded name of proc i's task, "" for a helper.
func taskComm(p *Plan, i int) string {
	if t := p.Procs[i].Task; t >= 0 {
		return p.Tree.Tasks[t].Comm
	}
	return ""
}
