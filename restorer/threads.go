package restorer

// threadCloners maps each clone step that a thread of its actor performs
// (Step.Thread: the child's parent thread in the image, stopped payload)
// to the actor's OpThread step that created that thread: the builder hands
// the clone to that thread (builder_linux.go, delegate), whose mailbox is
// in that step's record. The model made sure the thread exists by then.
func threadCloners(p *Plan) map[int]int {
	type key struct{ actor, tid int }
	made := map[key]int{}
	out := map[int]int{}
	for i := range p.Steps {
		s := &p.Steps[i]
		switch {
		case s.Op == OpThread:
			made[key{s.Actor, s.PIDs[0]}] = i
		case s.Op == OpClone && s.Thread != 0:
			if j, ok := made[key{s.Actor, s.Thread}]; ok {
				out[i] = j
			}
		}
	}
	return out
}
