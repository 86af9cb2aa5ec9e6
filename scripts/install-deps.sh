#!/usr/bin/env bash
# Installs, from Debian and the Go module proxy, everything the build, the
# tests and the demo need; with --generate also the code generators' tools.
# Safe to run again: it skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=()
need() { dpkg -s "$1" >/dev/null 2>&1 || pkgs+=("$1"); }
need file
need qemu-system-x86   # vm-test: boots a real kernel under TCG
need xz-utils
need busybox-static    # vm-test/demo: a shell inside namespaces and VMs
need gcc               # agent tests: a C helper free of any runtime's signal handling
need libc6-dev         # ... linked statically so it also runs inside test VMs
need runc              # a real container runtime: nsinit as a container's init, dumped and restored
if [ "${1:-}" = --generate ]; then
	# make generate: the eBPF objects and the protobuf code.
	need clang
	need llvm
	need libbpf-dev
	need bpftool
	need protobuf-compiler
fi
if [ ${#pkgs[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
go mod download
