package pstree

import (
	"encoding/json"
	"fmt"
)

// The JSON view of a tree printed by `nsinit show`: stable field names
// (snake_case, documented in docs/image-format.md), namespace kinds and
// states as words, namespace sets as objects keyed by kind. Field order is
// fixed by the structs below, map keys are sorted by encoding/json.

type jsonTree struct {
	FormatVersion string          `json:"format_version"`
	Checked       bool            `json:"checked"`
	Subreapers    bool            `json:"subreapers_recorded"`
	Kernel        string          `json:"kernel,omitempty"`
	PidMax        int             `json:"pid_max,omitempty"`
	State         bool            `json:"state_recorded,omitempty"`
	Namespaces    []jsonNamespace `json:"namespaces"`
	Tasks         []jsonTask      `json:"tasks"`
}

type jsonNamespace struct {
	ID               NSID         `json:"id"`
	Kind             string       `json:"kind"`
	Parent           NSID         `json:"parent,omitempty"`
	Owner            NSID         `json:"owner,omitempty"`
	Level            *int         `json:"level,omitempty"`
	LastPID          int          `json:"last_pid,omitempty"`
	UIDMap           []IDMapEntry `json:"uid_map,omitempty"`
	GIDMap           []IDMapEntry `json:"gid_map,omitempty"`
	SetgroupsAllowed *bool        `json:"setgroups_allowed,omitempty"`
	OwnerUID         *uint32      `json:"owner_uid,omitempty"`
	Hostname         string       `json:"hostname,omitempty"`
	Domainname       string       `json:"domainname,omitempty"`
	Ambient          bool         `json:"ambient,omitempty"`
	Links            []jsonLink   `json:"links,omitempty"`
	Routes           []jsonRoute  `json:"routes,omitempty"`
	Mounts           []jsonMount  `json:"mounts,omitempty"`
}

type jsonMount struct {
	Point        string `json:"point"`
	Root         string `json:"root"`
	FSType       string `json:"fstype"`
	Source       string `json:"source"`
	Options      string `json:"options"`
	SuperOptions string `json:"super_options"`
	BindOf       int    `json:"bind_of,omitempty"`
	HostPath     string `json:"host_path,omitempty"`
	PidNS        NSID   `json:"pid_ns,omitempty"`
}

type jsonLink struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	KindName string   `json:"kind_name,omitempty"`
	Up       bool     `json:"up"`
	MTU      int      `json:"mtu"`
	MAC      string   `json:"mac,omitempty"`
	Addrs    []string `json:"addrs"`
	PeerNS   NSID     `json:"peer_ns,omitempty"`
	PeerName string   `json:"peer_name,omitempty"`
}

type jsonRoute struct {
	Dst      string `json:"dst"`
	Gateway  string `json:"gateway,omitempty"`
	Src      string `json:"src,omitempty"`
	Dev      string `json:"dev,omitempty"`
	Table    uint32 `json:"table"`
	Protocol uint8  `json:"protocol"`
	Scope    uint8  `json:"scope"`
	Type     uint8  `json:"type"`
	Metric   uint32 `json:"metric"`
}

type jsonThread struct {
	TIDs  []int  `json:"tids"`
	State string `json:"state"`
	Comm  string `json:"comm,omitempty"`
}

type jsonCreds struct {
	UIDs   [4]uint32 `json:"uids"` // real, effective, saved, fs
	GIDs   [4]uint32 `json:"gids"`
	Groups []uint32  `json:"groups"`
	CapInh string    `json:"cap_inh"`
	CapPrm string    `json:"cap_prm"`
	CapEff string    `json:"cap_eff"`
	CapBnd string    `json:"cap_bnd"`
	CapAmb string    `json:"cap_amb"`
}

type jsonTask struct {
	PIDs           []int           `json:"pids"`
	PPID           int             `json:"ppid"`
	PGIDs          []int           `json:"pgids"`
	SIDs           []int           `json:"sids"`
	State          string          `json:"state"`
	ExitStatus     *int            `json:"exit_status,omitempty"`
	Exit           string          `json:"exit,omitempty"`
	Threads        []jsonThread    `json:"threads"`
	NS             map[string]NSID `json:"ns"`
	Creds          jsonCreds       `json:"creds"`
	Comm           string          `json:"comm,omitempty"`
	Exe            string          `json:"exe"`
	Argv           []string        `json:"argv"`
	Env            []string        `json:"env"`
	Cwd            string          `json:"cwd"`
	Root           string          `json:"root"`
	ChildSubreaper bool            `json:"child_subreaper"`
	Agent          bool            `json:"agent"`
	Waits          bool            `json:"waits_for_children,omitempty"`
	RootElsewhere  bool            `json:"root_elsewhere,omitempty"`
	// ParentTID: the parent's thread whose child it is, when that is not
	// the parent's leader (ParentTID == PPID is left out).
	ParentTID int `json:"parent_tid,omitempty"`
}

func (m IDMapEntry) MarshalJSON() ([]byte, error) {
	return json.Marshal([3]uint32{m.Inside, m.Outside, m.Count})
}

// DescribeExit spells out a raw wait status: "exited 3", "killed by signal
// 9", "killed by signal 11 (core dumped)".
func DescribeExit(status int) string {
	if sig := status & 0x7f; sig != 0 {
		s := fmt.Sprintf("killed by signal %d", sig)
		if status&0x80 != 0 {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("exited %d", status>>8&0xff)
}

// JSON renders the tree for `nsinit show`, indented, ending in a newline.
func JSON(tr *Tree) ([]byte, error) {
	out := jsonTree{
		FormatVersion: fmt.Sprintf("%d.%d", FormatMajor, FormatMinor),
		Checked:       tr.Checked,
		Subreapers:    tr.SubreapersRecorded,
		Kernel:        tr.Kernel,
		PidMax:        tr.PidMax,
		State:         tr.StateRecorded,
		Namespaces:    []jsonNamespace{},
		Tasks:         []jsonTask{},
	}
	for _, ns := range tr.Namespaces {
		j := jsonNamespace{ID: ns.ID, Kind: ns.Kind.String(), Parent: ns.Parent, Owner: ns.Owner,
			LastPID: ns.LastPID, Hostname: ns.Hostname, Domainname: ns.Domainname, Ambient: ns.Ambient}
		for _, l := range ns.Links {
			jl := jsonLink{Name: l.Name, Kind: l.Kind.String(), KindName: l.KindName, Up: l.Up, MTU: l.MTU,
				MAC: l.MAC.String(), Addrs: []string{}, PeerNS: l.PeerNS, PeerName: l.PeerName}
			for _, a := range l.Addrs {
				jl.Addrs = append(jl.Addrs, a.String())
			}
			j.Links = append(j.Links, jl)
		}
		for _, r := range ns.Routes {
			jr := jsonRoute{Dst: r.Dst.String(), Dev: r.Dev, Table: r.Table, Protocol: r.Protocol,
				Scope: r.Scope, Type: r.Type, Metric: r.Metric}
			if r.Gateway.IsValid() {
				jr.Gateway = r.Gateway.String()
			}
			if r.Src.IsValid() {
				jr.Src = r.Src.String()
			}
			j.Routes = append(j.Routes, jr)
		}
		for _, m := range ns.Mounts {
			j.Mounts = append(j.Mounts, jsonMount(m))
		}
		switch ns.Kind {
		case PidNS:
			l := ns.Level
			j.Level = &l
		case UserNS:
			sa, uid := ns.SetgroupsAllowed, ns.OwnerUID
			j.UIDMap, j.GIDMap, j.SetgroupsAllowed, j.OwnerUID = ns.UIDMap, ns.GIDMap, &sa, &uid
		}
		out.Namespaces = append(out.Namespaces, j)
	}
	for _, t := range tr.Tasks {
		c := t.Creds
		hex := func(v uint64) string { return fmt.Sprintf("%016x", v) }
		j := jsonTask{
			PIDs: t.PIDs, PPID: t.PPID, PGIDs: t.PGIDs, SIDs: t.SIDs, State: t.State.String(),
			Threads: []jsonThread{}, NS: map[string]NSID{},
			Creds: jsonCreds{
				UIDs: [4]uint32{c.UID, c.EUID, c.SUID, c.FSUID}, GIDs: [4]uint32{c.GID, c.EGID, c.SGID, c.FSGID},
				Groups: nonNil(c.Groups), CapInh: hex(c.CapInh), CapPrm: hex(c.CapPrm), CapEff: hex(c.CapEff),
				CapBnd: hex(c.CapBnd), CapAmb: hex(c.CapAmb),
			},
			Comm: t.Comm, Exe: t.Exe, Argv: nonNil(t.Argv), Env: nonNil(t.Env), Cwd: t.Cwd, Root: t.Root,
			ChildSubreaper: t.ChildSubreaper, Agent: t.Agent, Waits: t.WaitsForChildren, RootElsewhere: t.RootElsewhere,
		}
		if t.ParentTID != t.PPID {
			j.ParentTID = t.ParentTID
		}
		if t.State == Zombie {
			st := t.ExitStatus
			j.ExitStatus, j.Exit = &st, DescribeExit(st)
		}
		for _, th := range t.Threads {
			j.Threads = append(j.Threads, jsonThread{TIDs: th.TIDs, State: th.State.String(), Comm: th.Comm})
		}
		for k, id := range t.NS {
			if id != 0 {
				j.NS[NSKind(k).String()] = id
			}
		}
		out.Tasks = append(out.Tasks, j)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
