// Package bpf traces fork, exit and exec of the tasks of a process tree that
// spans nested pid namespaces, with eBPF programs on the tp_btf
// sched_process_{fork,exit,exec} tracepoints.
//
// The programs (trace.bpf.c) filter in the kernel: a task counts when its pid
// at some level lies in a watched pid namespace (so every namespace nested
// below a watched one counts too), or when its level-0 tgid is watched (the
// tree's tasks in the host namespace; a watched process's children become
// watched). Each matched event bumps exact counters before its record goes
// to a ring buffer, so "counter unchanged" is a loss-proof consistency check
// and the records say which task moved. See docs/ebpf.md.
//
// Subreapers (subreaper.bpf.c, a task iterator) reads which processes are
// child subreapers, which the kernel shows nowhere else.
//
// trace_bpfel.go, trace_bpfel.o, subreaper_bpfel.go and subreaper_bpfel.o
// are generated and committed, so building needs no clang; `make generate`
// rebuilds them.
package bpf

//go:generate go tool bpf2go -cc clang -target bpfel -type event trace trace.bpf.c -- -I./headers -Wall -Werror
//go:generate go tool bpf2go -cc clang -target bpfel subreaper subreaper.bpf.c -- -I./headers -Wall -Werror
//go:generate go tool bpf2go -cc clang -target bpfel signals signals.bpf.c -- -I./headers -Wall -Werror
