package imagefile

import (
	"fmt"
	"unsafe"

	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
)

// toProto and fromProto are the only places that know both shapes.
// fromProto only converts (ints are 64 bits wide, so nothing is cut): every
// range check is pstree.Validate's, run on what it returns.

func toProto(tr *pstree.Tree) *imagepb.Image {
	img := &imagepb.Image{Checked: tr.Checked, SubreapersRecorded: tr.SubreapersRecorded, Kernel: tr.Kernel, PidMax: int64(tr.PidMax),
		StateRecorded: tr.StateRecorded}
	for _, ns := range tr.Namespaces {
		img.Namespaces = append(img.Namespaces, &imagepb.Namespace{
			Id:               uint32(ns.ID),
			Kind:             imagepb.NSKind(ns.Kind),
			Parent:           uint32(ns.Parent),
			Owner:            uint32(ns.Owner),
			Level:            uint32(ns.Level),
			LastPid:          int64(ns.LastPID),
			UidMap:           mapToProto(ns.UIDMap),
			GidMap:           mapToProto(ns.GIDMap),
			SetgroupsAllowed: ns.SetgroupsAllowed,
			OwnerUid:         ns.OwnerUID,
			Hostname:         bytesOf(ns.Hostname),
			Domainname:       bytesOf(ns.Domainname),
			Ambient:          ns.Ambient,
			Links:            linksToProto(ns.Links),
			Routes:           routesToProto(ns.Routes),
			Mounts:           mountsToProto(ns.Mounts),
		})
	}
	for i := range tr.Tasks {
		t := &tr.Tasks[i]
		pt := &imagepb.Task{
			Pids:       ints32(t.PIDs),
			Ppid:       int32(t.PPID),
			Pgids:      ints32(t.PGIDs),
			Sids:       ints32(t.SIDs),
			State:      imagepb.TaskState(t.State),
			ExitStatus: int32(t.ExitStatus),
			Ns: &imagepb.NSSet{
				Pid:            uint32(t.NS[pstree.PidNS]),
				PidForChildren: uint32(t.NS[pstree.PidForChildrenNS]),
				User:           uint32(t.NS[pstree.UserNS]),
				Net:            uint32(t.NS[pstree.NetNS]),
				Uts:            uint32(t.NS[pstree.UTSNS]),
				Ipc:            uint32(t.NS[pstree.IPCNS]),
				Mnt:            uint32(t.NS[pstree.MntNS]),
				Cgroup:         uint32(t.NS[pstree.CgroupNS]),
				Time:           uint32(t.NS[pstree.TimeNS]),
			},
			Creds: &imagepb.Creds{
				Uid: t.Creds.UID, Euid: t.Creds.EUID, Suid: t.Creds.SUID, Fsuid: t.Creds.FSUID,
				Gid: t.Creds.GID, Egid: t.Creds.EGID, Sgid: t.Creds.SGID, Fsgid: t.Creds.FSGID,
				Groups: t.Creds.Groups,
				CapInh: t.Creds.CapInh, CapPrm: t.Creds.CapPrm, CapEff: t.Creds.CapEff,
				CapBnd: t.Creds.CapBnd, CapAmb: t.Creds.CapAmb,
			},
			Comm:             bytesOf(t.Comm),
			Exe:              bytesOf(t.Exe),
			Argv:             bytesListOf(t.Argv),
			Env:              bytesListOf(t.Env),
			Cwd:              bytesOf(t.Cwd),
			Root:             bytesOf(t.Root),
			ChildSubreaper:   t.ChildSubreaper,
			Agent:            t.Agent,
			WaitsForChildren: t.WaitsForChildren,
			RootElsewhere:    t.RootElsewhere,
			ParentTid:        int32(t.ParentTID),
		}
		for _, th := range t.Threads {
			pt.Threads = append(pt.Threads, &imagepb.Thread{Tids: ints32(th.TIDs), State: imagepb.TaskState(th.State), Comm: bytesOf(th.Comm)})
		}
		img.Tasks = append(img.Tasks, pt)
	}
	return img
}

func fromProto(img *imagepb.Image) (*pstree.Tree, error) {
	tr := &pstree.Tree{Checked: img.GetChecked(), SubreapersRecorded: img.GetSubreapersRecorded(),
		Kernel: img.GetKernel(), PidMax: int(img.GetPidMax()), StateRecorded: img.GetStateRecorded()}
	for i, ns := range img.GetNamespaces() {
		links, err := linksFromProto(ns.GetLinks())
		if err != nil {
			return nil, fmt.Errorf("namespace %d: %w", i, err)
		}
		routes, err := routesFromProto(ns.GetRoutes())
		if err != nil {
			return nil, fmt.Errorf("namespace %d: %w", i, err)
		}
		tr.Namespaces = append(tr.Namespaces, pstree.Namespace{
			ID:               pstree.NSID(ns.GetId()),
			Kind:             pstree.NSKind(ns.GetKind()),
			Parent:           pstree.NSID(ns.GetParent()),
			Owner:            pstree.NSID(ns.GetOwner()),
			Level:            int(ns.GetLevel()),
			LastPID:          int(ns.GetLastPid()),
			UIDMap:           mapFromProto(ns.GetUidMap()),
			GIDMap:           mapFromProto(ns.GetGidMap()),
			SetgroupsAllowed: ns.GetSetgroupsAllowed(),
			OwnerUID:         ns.GetOwnerUid(),
			Hostname:         string(ns.GetHostname()),
			Domainname:       string(ns.GetDomainname()),
			Ambient:          ns.GetAmbient(),
			Links:            links,
			Routes:           routes,
			Mounts:           mountsFromProto(ns.GetMounts()),
		})
	}
	for _, pt := range img.GetTasks() {
		n, c := pt.GetNs(), pt.GetCreds()
		t := pstree.Task{
			PIDs:       intsFrom(pt.GetPids()),
			PPID:       int(pt.GetPpid()),
			PGIDs:      intsFrom(pt.GetPgids()),
			SIDs:       intsFrom(pt.GetSids()),
			State:      pstree.TaskState(pt.GetState()),
			ExitStatus: int(pt.GetExitStatus()),
			Creds: pstree.Creds{
				UID: c.GetUid(), EUID: c.GetEuid(), SUID: c.GetSuid(), FSUID: c.GetFsuid(),
				GID: c.GetGid(), EGID: c.GetEgid(), SGID: c.GetSgid(), FSGID: c.GetFsgid(),
				Groups: c.GetGroups(),
				CapInh: c.GetCapInh(), CapPrm: c.GetCapPrm(), CapEff: c.GetCapEff(),
				CapBnd: c.GetCapBnd(), CapAmb: c.GetCapAmb(),
			},
			Comm:             string(pt.GetComm()),
			Exe:              string(pt.GetExe()),
			Argv:             stringsFrom(pt.GetArgv()),
			Env:              stringsFrom(pt.GetEnv()),
			Cwd:              string(pt.GetCwd()),
			Root:             string(pt.GetRoot()),
			ChildSubreaper:   pt.GetChildSubreaper(),
			Agent:            pt.GetAgent(),
			WaitsForChildren: pt.GetWaitsForChildren(),
			RootElsewhere:    pt.GetRootElsewhere(),
			ParentTID:        int(pt.GetParentTid()),
		}
		t.NS[pstree.PidNS] = pstree.NSID(n.GetPid())
		t.NS[pstree.PidForChildrenNS] = pstree.NSID(n.GetPidForChildren())
		t.NS[pstree.UserNS] = pstree.NSID(n.GetUser())
		t.NS[pstree.NetNS] = pstree.NSID(n.GetNet())
		t.NS[pstree.UTSNS] = pstree.NSID(n.GetUts())
		t.NS[pstree.IPCNS] = pstree.NSID(n.GetIpc())
		t.NS[pstree.MntNS] = pstree.NSID(n.GetMnt())
		t.NS[pstree.CgroupNS] = pstree.NSID(n.GetCgroup())
		t.NS[pstree.TimeNS] = pstree.NSID(n.GetTime())
		for _, th := range pt.GetThreads() {
			t.Threads = append(t.Threads, pstree.Thread{TIDs: intsFrom(th.GetTids()), State: pstree.TaskState(th.GetState()), Comm: string(th.GetComm())})
		}
		tr.Tasks = append(tr.Tasks, t)
	}
	return tr, nil
}

func mapToProto(m []pstree.IDMapEntry) []*imagepb.IDMapEntry {
	var out []*imagepb.IDMapEntry
	for _, e := range m {
		out = append(out, &imagepb.IDMapEntry{Inside: e.Inside, Outside: e.Outside, Count: e.Count})
	}
	return out
}

func mapFromProto(m []*imagepb.IDMapEntry) []pstree.IDMapEntry {
	var out []pstree.IDMapEntry
	for _, e := range m {
		out = append(out, pstree.IDMapEntry{Inside: e.GetInside(), Outside: e.GetOutside(), Count: e.GetCount()})
	}
	return out
}

func ints32(v []int) []int32 {
	if v == nil {
		return nil
	}
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out
}

func intsFrom(v []int32) []int {
	if v == nil {
		return nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// bytesListOf is bytesOf of each string.
func bytesListOf(v []string) [][]byte {
	if v == nil {
		return nil
	}
	out := make([][]byte, len(v))
	for i, s := range v {
		out[i] = bytesOf(s)
	}
	return out
}

// bytesOf is the bytes of s without a copy, for toProto only: its message
// lives just long enough for Marshal, which never writes to it. Strings
// are most of an image (environments above all), and copying them doubled
// the memory and much of the time of encoding a big tree.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func stringsFrom(v [][]byte) []string {
	if v == nil {
		return nil
	}
	out := make([]string, len(v))
	for i, b := range v {
		out[i] = string(b)
	}
	return out
}
