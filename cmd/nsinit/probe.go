package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/nsinit/nsinit/internal/probe"
)

// runProbe is `nsinit check` without a tree: every probe of internal/probe,
// as a table or as JSON, and a status that says whether a dump and a
// restore can run here (README, "nsinit check").
func runProbe(asJSON bool) int {
	res := probe.All()
	code := probeStatus(res)
	if asJSON {
		out := struct {
			Ready  bool           `json:"ready"`
			Status int            `json:"status"`
			Probes []probe.Result `json:"probes"`
		}{code == 0, code, res}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			fmt.Fprintf(os.Stderr, "nsinit check: %v\n", err)
			return exitFailure
		}
		os.Stdout.Write(append(b, '\n'))
		return code
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	for _, r := range res {
		state := "works"
		if !r.Works {
			state = "missing"
			if !r.Required {
				state = "missing (optional)"
			}
		}
		line := r.Name + "\t" + state
		if r.Detail != "" {
			line += "\t" + r.Detail
		}
		fmt.Fprintln(w, line)
		if !r.Works {
			fmt.Fprintf(w, "\t  disables\t%s\n", r.Disables)
		}
	}
	w.Flush()
	switch code {
	case 0:
		fmt.Println("dump and restore: everything they need works")
	case exitCapability:
		fmt.Println("dump and restore: missing capabilities or permissions (run as root)")
	default:
		fmt.Println("dump and restore: this kernel lacks a required piece")
	}
	return code
}

// probeStatus: 0 when every required probe works, exitUnsupported when
// the kernel lacks one, else exitCapability (only permissions missing).
func probeStatus(res []probe.Result) int {
	code := 0
	for _, r := range res {
		switch {
		case r.Works || !r.Required:
		case !r.Permission:
			return exitUnsupported
		default:
			code = exitCapability
		}
	}
	return code
}
