package state

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mapping is one entry of /proc/PID/smaps (or maps).
type mapping struct {
	start, end uint64
	prot       uint32
	shared     bool
	offset     uint64
	dev, inode uint64 // dev as unix.Mkdev makes it
	path       string
	growsDown  bool // VmFlags "gd" (smaps only)
	mayWrite   bool // VmFlags "mw": mprotect may add PROT_WRITE
}

func (m mapping) String() string {
	return fmt.Sprintf("%#x-%#x %s", m.start, m.end, m.path)
}

// special names the kernel's own mappings that are moved, not re-created.
func (m mapping) special() bool {
	return m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]"
}

// readMaps parses /proc/PID/smaps, or /proc/PID/maps when smaps is false
// (no VmFlags then: growsDown stays false).
func readMaps(proc string, pid int, smaps bool) ([]mapping, error) {
	name := "maps"
	if smaps {
		name = "smaps"
	}
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/%s", proc, pid, name))
	if err != nil {
		return nil, err
	}
	var out []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "VmFlags:") {
			if len(out) > 0 {
				for _, f := range strings.Fields(line[len("VmFlags:"):]) {
					switch f {
					case "gd":
						out[len(out)-1].growsDown = true
					case "mw":
						out[len(out)-1].mayWrite = true
					}
				}
			}
			continue
		}
		if smaps && !isHeader(line) {
			continue
		}
		m, err := parseMapLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s/%d/%s: %w", proc, pid, name, err)
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// isHeader tells a mapping's line of smaps from its "Key: value" lines:
// it starts with the hex range.
func isHeader(line string) bool {
	i := strings.IndexByte(line, ' ')
	return i > 0 && strings.IndexByte(line[:i], '-') > 0 && !strings.HasSuffix(line[:i], ":")
}

// parseMapLine parses "start-end perms offset dev inode [path]"; the path
// is what follows the inode after the padding, and may hold blanks.
func parseMapLine(line string) (mapping, error) {
	var m mapping
	rest := line
	field := func() string {
		rest = strings.TrimLeft(rest, " ")
		i := strings.IndexByte(rest, ' ')
		if i < 0 {
			f := rest
			rest = ""
			return f
		}
		f := rest[:i]
		rest = rest[i:]
		return f
	}
	rng, perms, off, dev, ino := field(), field(), field(), field(), field()
	a, b, ok := strings.Cut(rng, "-")
	var err error
	if !ok || len(perms) != 4 {
		return m, fmt.Errorf("bad line %q", line)
	}
	if m.start, err = strconv.ParseUint(a, 16, 64); err != nil {
		return m, err
	}
	if m.end, err = strconv.ParseUint(b, 16, 64); err != nil {
		return m, err
	}
	if perms[0] == 'r' {
		m.prot |= unix.PROT_READ
	}
	if perms[1] == 'w' {
		m.prot |= unix.PROT_WRITE
	}
	if perms[2] == 'x' {
		m.prot |= unix.PROT_EXEC
	}
	m.shared = perms[3] == 's'
	if m.offset, err = strconv.ParseUint(off, 16, 64); err != nil {
		return m, err
	}
	maj, mnr, ok := strings.Cut(dev, ":")
	if !ok {
		return m, fmt.Errorf("bad device in %q", line)
	}
	x, err1 := strconv.ParseUint(maj, 16, 32)
	y, err2 := strconv.ParseUint(mnr, 16, 32)
	if err1 != nil || err2 != nil {
		return m, fmt.Errorf("bad device in %q", line)
	}
	m.dev = unix.Mkdev(uint32(x), uint32(y))
	if m.inode, err = strconv.ParseUint(ino, 10, 64); err != nil {
		return m, err
	}
	m.path = strings.TrimLeft(rest, " ")
	return m, nil
}
