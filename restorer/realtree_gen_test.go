package restorer

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file generates random REAL process trees: busybox sh scripts that,
// run from a seed, build a tree of processes mixing nested pid namespaces,
// sessions, process groups, zombies, orphans, stopped tasks, tasks born into
// a namespace through setns, nsinit agents, user, net and uts namespaces.
// realtree_test.go dumps, kills, restores and compares them through /proc.
//
// Every process ends as a program that starts no children of its own
// (busybox sleep, an nsinit agent, the threads role of the test binary):
// the exec payload re-runs each recorded program from its start.

// realtreeRoleEnv makes the re-executed test binary do one thing busybox
// cannot (setpgid, PR_SET_CHILD_SUBREAPER, threads) and then exec the rest
// of its arguments. It is handled in init(), before TestMain.
const realtreeRoleEnv = "NSINIT_REALTREE_ROLE"

func init() {
	role, ok := os.LookupEnv(realtreeRoleEnv)
	if !ok {
		return
	}
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "realtree role %s: %v\n", role, err)
		os.Exit(99)
	}
	switch {
	case role == "threads":
		// Three threads blocked in pause(2) on top of the runtime's own.
		// The role stays in the environment: the exec payload re-runs it.
		for i := 0; i < 3; i++ {
			go func() {
				runtime.LockOSThread()
				for {
					syscall.Syscall(syscall.SYS_PAUSE, 0, 0, 0)
				}
			}()
		}
		for {
			time.Sleep(time.Hour)
		}
	case role == "threadfork":
		// A child forked by the leader and one forked by another thread
		// (issue #12, parent threads), then nothing. In init() the main
		// goroutine is locked to the main thread (the runtime does it
		// for package initialisation), so a goroutine that locks its own
		// thread runs on another one, and os/exec forks from the thread
		// it runs on.
		start := func() {
			if err := exec.Command("/bin/busybox", "sleep", "1000").Start(); err != nil {
				fail(err)
			}
		}
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			start()
			close(done)
			select {}
		}()
		<-done
		start()
		for {
			time.Sleep(time.Hour)
		}
	case role == "setpgid":
		if err := unix.Setpgid(0, 0); err != nil {
			fail(err)
		}
	case strings.HasPrefix(role, "joinpgid:"):
		// The group's leader may not have made its group yet.
		g, _ := strconv.Atoi(strings.TrimPrefix(role, "joinpgid:"))
		for i := 0; ; i++ {
			err := unix.Setpgid(0, g)
			if err == nil {
				break
			}
			if i > 1000 {
				fail(fmt.Errorf("setpgid(0, %d): %w", g, err))
			}
			time.Sleep(5 * time.Millisecond)
		}
	case role == "session":
		// A login shell's stand-in: it leads a new session and group,
		// runs the rest of its arguments as a child in them (printing
		// the child's pid), reaps it and stays.
		if _, err := unix.Setsid(); err != nil {
			fail(err)
		}
		cmd := exec.Command(os.Args[1], os.Args[2:]...)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, realtreeRoleEnv+"=") })
		if err := cmd.Start(); err != nil {
			fail(err)
		}
		fmt.Println(cmd.Process.Pid)
		cmd.Wait()
		for {
			time.Sleep(time.Hour)
		}
	case role == "subreaper":
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown role"))
	}
	if len(os.Args) < 2 {
		fail(fmt.Errorf("nothing to exec"))
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, realtreeRoleEnv+"=") {
			env = append(env, e)
		}
	}
	fail(syscall.Exec(os.Args[1], os.Args[1:], env))
}

// reaper is what an orphan born in a context is re-parented to.
type reaper int

const (
	reaperNone  reaper = iota // level 0 without a subreaper: the orphan would leave the tree
	reaperPlain               // a shell that ends as sleep: dead orphans stay zombies
	reaperAgent               // an nsinit agent: it reaps dead orphans
)

// rtNS is a pid namespace of the generated tree.
type rtNS struct {
	parent int    // index in gen.nss, -1 for level 0
	level  int    // 0 for the tree's root namespace
	hp     string // file that holds the host pid of a member ("" at level 0)
	reaper reaper // the namespace's init
	user   bool   // owned by a user namespace the tree made
}

// rtCtx is where a shell's children are born.
type rtCtx struct {
	ns     int    // index of their pid namespace in gen.nss
	reaper reaper // who takes their orphans
	// orphaned: their parent exits, so a dead child disappears when the
	// reaper is an agent.
	orphaned bool
	user     bool // in a user namespace the tree made (no nsenter from there)
	// foreignOwner: their pid namespace is owned by a user namespace they
	// are not in (born there through nsenter), so they cannot make a child
	// pid namespace (the kernel says EINVAL).
	foreignOwner bool
	// plainShell: the shell's children are in its own pid namespace, so a
	// sibling's pid from $! names a group it can join.
	plainShell bool
}

type rtGen struct {
	r        *rand.Rand
	dir      string
	self     string // the test binary (roles)
	nsinit   string // bin/nsinit (agents)
	files    map[string]string
	order    []string
	tasks    int // tasks the settled tree has
	budget   int // tasks still to place
	maxLevel int
	nss      []rtNS
	n        int // script and sleep counter
}

// genRealTree writes the scripts of seed's tree into dir and returns the
// root script, its text for the log, and the number of tasks the settled
// tree has.
func genRealTree(seed int64, dir, self, nsinitBin string) (root, text string, tasks int) {
	g := &rtGen{r: rand.New(rand.NewSource(seed)), dir: dir, self: self, nsinit: nsinitBin, files: map[string]string{}}
	g.budget = 6 + g.r.Intn(26)
	g.maxLevel = 1 + g.r.Intn(4)
	g.nss = []rtNS{{parent: -1}}
	g.tasks = 1
	root = g.script("ulimit -c 0\n"+g.children(rtCtx{ns: 0, reaper: reaperNone, plainShell: true}, 2+g.r.Intn(4)), g.end(false))
	var b strings.Builder
	fmt.Fprintf(&b, "# seed %d: %d tasks, up to %d levels\n", seed, g.tasks, g.maxLevel)
	for _, f := range g.order {
		fmt.Fprintf(&b, "==> %s\n%s", f, g.files[f])
	}
	return root, b.String(), g.tasks
}

func (g *rtGen) next() int { g.n++; return g.n }

// script writes one script file made of body and end.
func (g *rtGen) script(body, end string) string {
	name := filepath.Join(g.dir, fmt.Sprintf("s%d.sh", g.next()))
	g.files[name] = body + end + "\n"
	g.order = append(g.order, name)
	if err := os.WriteFile(name, []byte(g.files[name]), 0o644); err != nil {
		panic(err) // t.TempDir() is writable
	}
	return name
}

// end is how a shell finishes: as a sleep, or by exiting (an orphan maker).
func (g *rtGen) end(exit bool) string {
	if exit {
		return fmt.Sprintf("exit %d", g.r.Intn(4))
	}
	return fmt.Sprintf("exec busybox sleep %d", 100000+g.next())
}

// count adds a task that ends dead or alive in ctx.
func (g *rtGen) count(ctx rtCtx, dead bool) {
	g.budget--
	if dead && ctx.orphaned && ctx.reaper == reaperAgent {
		return // the agent reaps it
	}
	g.tasks++
}

// children makes up to n children of a shell whose children are born in ctx.
func (g *rtGen) children(ctx rtCtx, n int) string {
	var b strings.Builder
	group := "" // a sibling group leader's pid variable
	for i := 0; i < n && g.budget > 0; i++ {
		b.WriteString(g.child(ctx, &group))
	}
	return b.String()
}

// child makes one child (and its subtree) and returns the line that
// starts it.
func (g *rtGen) child(ctx rtCtx, group *string) string {
	sub := ctx
	sub.orphaned = false
	for {
		switch g.r.Intn(16) {
		case 0, 1:
			g.count(ctx, false)
			return fmt.Sprintf("busybox sleep %d &\n", 100000+g.next())
		case 2:
			// It stops itself: `kill -STOP $!` from the parent can come
			// before the child's exec, and a stopped copy of the parent
			// shell would re-run the parent's script when restored.
			if ctx.orphaned {
				continue // an orphaned group with a stopped member gets SIGHUP
			}
			g.count(ctx, false)
			return fmt.Sprintf("busybox sh -c 'kill -STOP $$; exec busybox sleep %d' &\n", 100000+g.next())
		case 3:
			return g.nest(ctx, fmt.Sprintf("busybox sh -c 'exit %d'", []int{0, 1, 3, 127, 128, 200, 255}[g.r.Intn(7)]))
		case 4:
			return g.nest(ctx, fmt.Sprintf("busybox sh -c 'kill -%s $$'", []string{"KILL", "TERM", "HUP", "USR1", "SEGV", "ABRT"}[g.r.Intn(6)]))
		case 5:
			g.count(ctx, false)
			return fmt.Sprintf("busybox sh %s &\n", g.shell(sub, false, ""))
		case 6:
			g.count(ctx, false)
			return fmt.Sprintf("busybox setsid busybox sh %s &\n", g.shell(sub, false, ""))
		case 7:
			g.count(ctx, false)
			line := fmt.Sprintf("%s=setpgid %s /bin/busybox sh %s &\n", realtreeRoleEnv, g.self, g.shell(sub, false, ""))
			if ctx.plainShell && *group == "" {
				*group = fmt.Sprintf("G%d", g.next())
				line += *group + "=$!\n"
			}
			return line
		case 8:
			if *group == "" {
				continue
			}
			g.count(ctx, false)
			return fmt.Sprintf("%s=joinpgid:$%s %s /bin/busybox sleep %d &\n", realtreeRoleEnv, *group, g.self, 100000+g.next())
		case 9:
			g.count(ctx, false)
			sr := sub
			sr.reaper = reaperPlain
			return fmt.Sprintf("%s=subreaper %s /bin/busybox sh %s &\n", realtreeRoleEnv, g.self, g.shell(sr, false, ""))
		case 10:
			g.count(ctx, false)
			return fmt.Sprintf("%s=threads %s &\n", realtreeRoleEnv, g.self)
		case 11:
			if ctx.reaper == reaperNone {
				continue
			}
			o := sub
			o.orphaned = true
			return g.nest(ctx, "busybox sh "+g.shell(o, true, ""))
		case 12:
			g.count(ctx, false)
			host := fmt.Sprintf("h%d", g.next())
			if g.r.Intn(2) == 0 {
				return fmt.Sprintf("busybox unshare -n busybox sh %s &\n", g.shell(sub, false, ""))
			}
			return fmt.Sprintf("busybox unshare -u busybox sh %s &\n", g.shell(sub, false, "busybox hostname "+host+"\n"))
		case 13, 14:
			if g.nss[ctx.ns].level >= g.maxLevel || g.budget < 2 || ctx.foreignOwner {
				continue
			}
			if g.r.Intn(6) == 0 {
				// A namespace whose init exited: a zombie init whose
				// namespace is dead, under a launcher whose
				// pid_for_children still names it.
				g.count(ctx, false)
				g.count(rtCtx{}, true)
				l := g.script(fmt.Sprintf("busybox sh -c 'exit %d' &\n", []int{0, 2, 129}[g.r.Intn(3)]), g.end(false))
				return fmt.Sprintf("busybox unshare -p busybox sh %s &\n", l)
			}
			return g.pidns(ctx)
		case 15:
			if ctx.user {
				continue
			}
			var targets []int
			for i := range g.nss {
				if g.below(i, ctx.ns) {
					targets = append(targets, i)
				}
			}
			if len(targets) == 0 {
				continue
			}
			return g.nsenter(ctx, targets[g.r.Intn(len(targets))])
		}
	}
}

// nest starts cmd, which ends dead, under a parent of its own that execs a
// sleep right after starting it: a zombie under a script shell went away
// now and then (busybox sh reaps finished background jobs at times).
func (g *rtGen) nest(ctx rtCtx, cmd string) string {
	if !ctx.plainShell || g.r.Intn(3) == 0 {
		g.count(ctx, true)
		return cmd + " &\n"
	}
	g.count(ctx, false)
	g.count(rtCtx{}, true)
	return "busybox sh " + g.script(cmd+" &\n", g.end(false)) + " &\n"
}

// below reports whether pid namespace i is a strict descendant of anc.
func (g *rtGen) below(i, anc int) bool {
	for p := g.nss[i].parent; p >= 0; p = g.nss[p].parent {
		if p == anc {
			return true
		}
	}
	return false
}

// shell writes a shell node's script: pre, its children, then its end.
func (g *rtGen) shell(ctx rtCtx, exit bool, pre string) string {
	ctx.plainShell = true
	return g.script(pre+g.children(ctx, g.r.Intn(4)), g.end(exit))
}

// pidns starts a launcher that unshares a pid namespace (sometimes with a
// user, net or uts namespace) without forking: its first child is the
// namespace's init, its later children are born in the namespace with their
// parent outside, and it ends as a sleep.
func (g *rtGen) pidns(ctx rtCtx) string {
	flags := "-p"
	user := ctx.user
	pre := ""
	switch g.r.Intn(6) {
	case 0:
		flags, user = "-p -r", true
	case 1:
		flags = "-p -n"
	case 2:
		flags = "-p -u"
		pre = fmt.Sprintf("busybox hostname h%d\n", g.next())
	}
	g.count(ctx, false) // the launcher
	ns := rtNS{parent: ctx.ns, level: g.nss[ctx.ns].level + 1, hp: filepath.Join(g.dir, fmt.Sprintf("hp%d", g.next())), reaper: reaperPlain, user: user}
	agent := g.r.Intn(2) == 0
	if agent {
		ns.reaper = reaperAgent
	}
	idx := len(g.nss)
	g.nss = append(g.nss, ns)
	in := rtCtx{ns: idx, reaper: ns.reaper, user: user}
	// The init (or the agent's command) publishes its host pid for nsenter:
	// /proc/self/stat read by the shell itself, without a child.
	pre += fmt.Sprintf("read p rest < /proc/self/stat; echo $p > %s\n", ns.hp)
	initScript := g.shell(in, false, pre)
	g.budget--
	g.tasks++
	var initLine string
	if agent {
		g.budget--
		g.tasks++
		initLine = fmt.Sprintf("%s -- busybox sh %s &\n", g.nsinit, initScript)
	} else {
		initLine = fmt.Sprintf("busybox sh %s &\n", initScript)
	}
	extra := ""
	if g.r.Intn(3) == 0 {
		extra = g.children(in, 1+g.r.Intn(2))
	}
	launcher := g.script(initLine+extra, g.end(false))
	return fmt.Sprintf("busybox unshare %s busybox sh %s &\n", flags, launcher)
}

// nsenter starts a shell that joins pid namespace target for its children
// (nsenter -F: setns without a fork) and ends as a sleep: its children are
// born in target with their parent outside.
func (g *rtGen) nsenter(ctx rtCtx, target int) string {
	g.count(ctx, false)
	ns := g.nss[target]
	in := rtCtx{ns: target, reaper: ns.reaper, user: ns.user, foreignOwner: ns.user}
	s := g.script(g.children(in, 1+g.r.Intn(3)), g.end(false))
	// Builtins only: a shell waiting for a foreground command reaps its
	// background children too, and the zombies would go.
	return fmt.Sprintf("while ! [ -s %s ]; do :; done; read hp < %s; nsenter -t $hp -p -F busybox sh %s &\n", ns.hp, ns.hp, s)
}
