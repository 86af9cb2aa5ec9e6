package dump

import (
	"testing"

	"github.com/nsinit/nsinit/pstree"
)

// TestDumpUnbornPidNS: after unshare(CLONE_NEWPID) and before its first
// child, a task's pid_for_children namespace has no init and the kernel
// hides its link. The dump records it as a child of the task's pid
// namespace that no task is in yet.
func TestDumpUnbornPidNS(t *testing.T) {
	tt := startTree(t, `exec busybox unshare -p busybox sleep 1000`, 1, false)
	defer tt.cleanup(t)
	tr, err := Dump(tt.root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	task := tr.Tasks[0]
	pfc := tr.Namespace(task.NS[pstree.PidForChildrenNS])
	if pfc == nil || pfc.ID == task.NS[pstree.PidNS] {
		t.Fatalf("pid_for_children %v: want a namespace of its own", task.NS[pstree.PidForChildrenNS])
	}
	if pfc.Kind != pstree.PidNS || pfc.Parent != task.NS[pstree.PidNS] || pfc.Level != task.Level()+1 || pfc.Owner != task.NS[pstree.UserNS] {
		t.Errorf("unborn namespace recorded as %+v; want a pid namespace below %d at level %d owned by %d",
			*pfc, task.NS[pstree.PidNS], task.Level()+1, task.NS[pstree.UserNS])
	}
	if err := pstree.Validate(tr); err != nil {
		t.Error(err)
	}
}
