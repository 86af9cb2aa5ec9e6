package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/PID/mountinfo (proc(5)), its escapes
// (\040 for a space, \011, \012, \134) undone.
type MountInfo struct {
	ID, Parent   int
	Major, Minor uint32
	// Root is the directory of the filesystem mounted at Point; Point is
	// relative to the reading task's root directory (the kernel shows only
	// the mounts under it).
	Root, Point  string
	Options      string // per mount
	FSType       string
	Source       string
	SuperOptions string
}

// MountInfo reads /proc/PID/mountinfo.
func (r *Reader) MountInfo(pid int) ([]MountInfo, error) {
	b, err := r.read(r.path(pid, "mountinfo"), false)
	if err != nil {
		return nil, err
	}
	return ParseMountInfo(b)
}

// SelfMountInfo reads this process's own mountinfo.
func SelfMountInfo() ([]MountInfo, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return ParseMountInfo(b)
}

// ParseMountInfo parses mountinfo text:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// with any number of optional fields before the "-".
func ParseMountInfo(b []byte) ([]MountInfo, error) {
	var out []MountInfo
	for n, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n+1, err)
		}
		out = append(out, m)
	}
	return out, nil
}

func parseMountLine(line string) (MountInfo, error) {
	var m MountInfo
	pre, post, ok := strings.Cut(line, " - ")
	f, g := strings.Fields(pre), strings.Fields(post)
	if !ok || len(f) < 6 || len(g) < 3 {
		return m, fmt.Errorf("malformed %q", line)
	}
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return m, err
	}
	if m.Parent, err = strconv.Atoi(f[1]); err != nil {
		return m, err
	}
	maj, min, ok := strings.Cut(f[2], ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	c, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return m, fmt.Errorf("bad device %q", f[2])
	}
	m.Major, m.Minor = uint32(a), uint32(c)
	m.Root, m.Point, m.Options = unescapeOctal(f[3]), unescapeOctal(f[4]), f[5]
	m.FSType, m.Source, m.SuperOptions = unescapeOctal(g[0]), unescapeOctal(g[1]), unescapeOctal(g[2])
	return m, nil
}

// unescapeOctal undoes the kernel's mangle(): a space, tab, newline or
// backslash shows as a backslash and three octal digits.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
