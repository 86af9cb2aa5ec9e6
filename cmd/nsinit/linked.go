package main

import (
	"runtime"
	"strings"
)

// missingLinkSettings lists what this binary lacks of the linker settings
// `make build` gives it (Makefile LDFLAGS) and the init needs, each with
// what it costs; empty for a Makefile build. A plain `go build` or `go
// install` lacks them all: the Go toolchain cannot set them from the
// source (asyncpreemptoff is not a //go:debug setting).
func missingLinkSettings() []string {
	var miss []string
	if noPreemptSignals != "1" {
		miss = append(miss, "asynchronous preemption is on (-X runtime.godebugDefault=asyncpreemptoff=1 -X main.noPreemptSignals=1): SIGURG is not forwarded to CMD")
	}
	if runtime.GOARCH == "amd64" && origSigKnown == 0 {
		miss = append(miss, "no assembly entry point (-E main.rt0): CMD gets the default signal mask and dispositions, not the ones nsinit was started with")
	}
	return miss
}

// versionText is the version line's text: the version, and what the
// binary lacks when it was not built by the Makefile.
func versionText() string {
	miss := missingLinkSettings()
	if len(miss) == 0 {
		return version
	}
	return version + " (built without the Makefile's linker settings: " + strings.Join(miss, "; ") + ")"
}

// linkWarning is the warning the init prints at start when the binary
// lacks the Makefile's linker settings, "" when it has them.
func linkWarning() string {
	miss := missingLinkSettings()
	if len(miss) == 0 {
		return ""
	}
	return "nsinit: warning: built without the Makefile's linker settings (use make build or make release): " + strings.Join(miss, "; ") + "\n"
}
