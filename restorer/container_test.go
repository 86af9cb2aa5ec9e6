package restorer

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/nsinit/nsinit/internal/testutil"
)

// TestE2EInsideUserNamespaceContainer runs make demo's whole flow (a tree
// over three pid namespaces with nsinit agents, dump --kill, restore -d,
// check) inside an unprivileged container: `unshare -U -r -p -f
// --mount-proc`. There nsinit is root of a user namespace that owns neither
// the host's uts/net namespaces nor a cgroup to freeze, setgroups is denied
// and eBPF is refused (the dump runs --unchecked). Besides nsinit's own
// check, the test compares the demo's two /proc tables (NSpid, PPid,
// NSpgid, NSsid, State of every task, read by awk, not by nsinit) before
// the dump and after the restore.
func TestE2EInsideUserNamespaceContainer(t *testing.T) {
	needRoot(t)
	bin := testutil.Binary(t)
	for _, tool := range []string{"unshare", "bash", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux, bash, busybox-static)", tool)
		}
	}
	out, err := os.CreateTemp(t.TempDir(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command("unshare", "-U", "-r", "-p", "-f", "--mount-proc", "bash", "demo/demo.sh")
	cmd.Dir = testutil.RepoRoot()
	cmd.Env = append(os.Environ(), "NSINIT="+bin, "NSINIT_DUMP_FLAGS=--unchecked")
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	b, _ := os.ReadFile(out.Name())
	text := string(b)
	if err != nil || !strings.Contains(text, "check: the restored tree matches the image exactly") {
		t.Fatalf("demo inside the container: %v\n%s", err, text)
	}
	before, after := demoTable(text, "== 1."), demoTable(text, "== 3.")
	if len(before) < 10 || !slices.Equal(before, after) {
		t.Errorf("/proc before the dump and after the restore differ:\nbefore:\n%s\nafter:\n%s\n\n%s",
			strings.Join(before, "\n"), strings.Join(after, "\n"), text)
	}
}

// demoTable returns the rows of the /proc table demo.sh prints after the
// heading that starts with section, without the command column (a restored
// agent's command line differs), sorted.
func demoTable(text, section string) []string {
	_, rest, _ := strings.Cut("\n"+text, "\n"+section)
	_, rest, _ = strings.Cut(rest, "\nNSpid ")
	_, rest, _ = strings.Cut(rest, "\n")
	var rows []string
	for _, line := range strings.Split(rest, "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "==") {
			break
		}
		// NSpid(18) PPid(7) NSpgid(18) NSsid(18) State(6), space separated
		if len(line) > 71 {
			line = line[:71]
		}
		// running or asleep is the same to a restore: a program just
		// restored may still be starting
		line = strings.TrimRight(line, " ")
		if strings.HasSuffix(line, " R") {
			line = strings.TrimSuffix(line, "R") + "S"
		}
		rows = append(rows, line)
	}
	slices.Sort(rows)
	return rows
}
