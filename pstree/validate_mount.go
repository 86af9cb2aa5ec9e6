package pstree

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Limits of recorded mounts.
const (
	// MaxMounts is the kernel's default fs.mount-max: no mount namespace
	// holds more mounts.
	MaxMounts = 100000
	// maxMountData is a page: mount(2) copies at most that much of its
	// options (copy_mount_options).
	maxMountData = 4096
	// maxFSType bounds a filesystem type name (the kernel's are short
	// words; fsopen(2) copies at most a page).
	maxFSType = 255
)

// validateMounts checks the mounts a namespace carries. A restore builds
// its mount targets as DIR plus Point and binds BindOf's mounts from
// inside DIR, so every path must be absolute and clean (no "..") and every
// reference must point back in the list.
func validateMounts(ns *Namespace) error {
	if ns.Kind != MntNS || ns.Ambient {
		if ns.Mounts != nil {
			return errors.New("mounts on a namespace that is not a recorded mount namespace")
		}
		return nil
	}
	if len(ns.Mounts) > MaxMounts {
		return fmt.Errorf("%d mounts, more than %d", len(ns.Mounts), MaxMounts)
	}
	for i := range ns.Mounts {
		if err := validateMount(ns.Mounts, i); err != nil {
			return fmt.Errorf("mount %d (%q): %w", i, ns.Mounts[i].Point, err)
		}
	}
	return nil
}

func validateMount(ms []Mount, i int) error {
	m := &ms[i]
	for _, p := range []struct {
		name, s  string
		optional bool
	}{{"point", m.Point, false}, {"root", m.Root, false}, {"host path", m.HostPath, true}} {
		if p.optional && p.s == "" {
			continue
		}
		if err := cleanPath(p.s); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	if m.FSType == "" {
		return errors.New("no filesystem type")
	}
	for _, s := range []struct {
		name, s string
		max     int
	}{{"fstype", m.FSType, maxFSType}, {"source", m.Source, MaxPath},
		{"options", m.Options, maxMountData}, {"super options", m.SuperOptions, maxMountData}} {
		if err := cString(s.s, s.max); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if m.BindOf < 0 || m.BindOf > i {
		return fmt.Errorf("bind of mount %d, not an earlier one", m.BindOf-1)
	}
	if m.BindOf > 0 {
		if from := ms[m.BindOf-1].Root; !InDir(m.Root, from) {
			return fmt.Errorf("root %q is not inside root %q of mount %d it binds", m.Root, from, m.BindOf-1)
		}
		if m.HostPath != "" {
			return errors.New("a bind of an earlier mount with a host path")
		}
	}
	if m.PidNS != 0 && m.FSType != "proc" {
		return fmt.Errorf("a pid namespace on a %s mount", m.FSType)
	}
	return nil
}

// validateMountRefs checks that every proc mount's pid namespace is one.
func validateMountRefs(ns *Namespace, byID map[NSID]*Namespace) error {
	for i, m := range ns.Mounts {
		if m.PidNS == 0 {
			continue
		}
		if p, ok := byID[m.PidNS]; !ok || p.Kind != PidNS {
			return fmt.Errorf("mount namespace %d: mount %d (%q): %d is not a pid namespace of the image", ns.ID, i, m.Point, m.PidNS)
		}
	}
	return nil
}

// cleanPath refuses a path that is not absolute and clean (as path.Clean
// leaves it: no "..", ".", "//" or trailing "/"), or not a C string.
func cleanPath(p string) error {
	if err := cString(p, MaxPath); err != nil {
		return err
	}
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return fmt.Errorf("%q is not an absolute clean path", p)
	}
	return nil
}

// InDir says whether clean absolute path p is dir or below it.
func InDir(p, dir string) bool {
	return dir == "/" || p == dir || strings.HasPrefix(p, dir+"/")
}
