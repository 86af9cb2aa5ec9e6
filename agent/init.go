// Package agent is nsinit's init with its restore protocol: the supervisor
// of internal/supervise (start, forward, reap) as PID 1 of a pid namespace
// or as a child subreaper, plus the agent side of the restore protocol: a
// restore socket it serves (listen.go), and a restored agent that adopts
// its restored command and serves the restorer (restored.go).
//
// A plain `nsinit -- CMD` with none of that runs internal/supervise
// without this package (internal/earlyinit), before the protocol's
// packages are even initialised. The VM's /init layer is internal/machine;
// the protocol's framing is internal/agentconn.
package agent

import (
	"os"

	"github.com/nsinit/nsinit/internal/procfs"
	"github.com/nsinit/nsinit/internal/supervise"
)

// Config says what the init supervises and how: the supervisor's settings,
// and the agent's restore socket. The zero value plus Argv is a tini-like
// init.
type Config struct {
	supervise.Config
	// Listen, when set, is the path of a restore socket the init serves
	// (listen.go): clients restore images into its pid namespace.
	Listen string
	// ListenUIDs are the uids served besides the agent's own (their
	// restores run with their ids and CAP_CHECKPOINT_RESTORE only).
	ListenUIDs []uint32
}

// Run supervises the command until it exits and returns the status nsinit
// must exit with (supervise.Run), serving the restore socket of
// cfg.Listen meanwhile.
func Run(cfg Config) int {
	sc := cfg.Config
	sc.Procs = procfs.New("/proc")
	if cfg.Listen != "" {
		// Once the signals are taken, before the command starts.
		sc.Setup = func() error {
			log := sc.Log
			if log == nil {
				log = os.Stderr
			}
			return Listen(cfg.Listen, cfg.ListenUIDs, log)
		}
	}
	return supervise.Run(sc)
}
