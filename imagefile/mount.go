package imagefile

import (
	"math"

	"github.com/nsinit/nsinit/proto/imagepb"
	"github.com/nsinit/nsinit/pstree"
)

// Mounts of a mount namespace: strings travel as bytes (Linux paths are
// not promised to be UTF-8); every check is pstree.Validate's.

func mountsToProto(ms []pstree.Mount) []*imagepb.Mount {
	var out []*imagepb.Mount
	for _, m := range ms {
		out = append(out, &imagepb.Mount{
			Point: []byte(m.Point), Root: []byte(m.Root), Fstype: []byte(m.FSType), Source: []byte(m.Source),
			Options: []byte(m.Options), SuperOptions: []byte(m.SuperOptions),
			BindOf: uint32(m.BindOf), HostPath: []byte(m.HostPath), PidNs: uint32(m.PidNS),
		})
	}
	return out
}

func mountsFromProto(pms []*imagepb.Mount) []pstree.Mount {
	var out []pstree.Mount
	for _, pm := range pms {
		b := pm.GetBindOf()
		if b > math.MaxInt32 {
			b = math.MaxInt32 // out of any list's range: Validate refuses it
		}
		out = append(out, pstree.Mount{
			Point: string(pm.GetPoint()), Root: string(pm.GetRoot()), FSType: string(pm.GetFstype()),
			Source: string(pm.GetSource()), Options: string(pm.GetOptions()), SuperOptions: string(pm.GetSuperOptions()),
			BindOf: int(b), HostPath: string(pm.GetHostPath()), PidNS: pstree.NSID(pm.GetPidNs()),
		})
	}
	return out
}
