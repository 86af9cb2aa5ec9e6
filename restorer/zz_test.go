package restorer
import ("testing";"github.com/nsinit/nsinit/internal/sys")
func TestZZ(t *testing.T){ needRoot(t)
 for k := 0; k < 4; k++ {
 b := newTB().ns(2,1,1); base:=freeBase(t,25000,3); b.task(2, []int{base,1},0,[]int{base,1},[]int{base,1}); tr:=sleepers(&b.tr)
 p,_:=NewPlan(tr,Options{}); bl,err:=newBlock(p); if err!=nil{t.Fatal(err)}
 r:=stepAt(bl.base,bl.stepsOff,0); 
 switch k { case 1: r.args.SetTID, r.args.SetTIDSize = 0, 0; case 2: r.args.SetTIDSize = 1; case 3: r.args.Flags = sys.CLONE_NEWPID|sys.CLONE_VM }
 t.Logf("settid %v n %d flags %#x", r.setTID[:2], r.args.SetTIDSize, r.args.Flags)
 tx:=&tx{p:p,b:bl}; err=tx.cloneRoot(0); t.Logf("k %d: %v", k, err)
 tx.rollbackUnlessCommitted()
 }
}
