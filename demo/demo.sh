#!/usr/bin/env bash
# make demo: build a real tree spanning three nested pid namespaces, dump it,
# kill it, restore it with the same pids at every level, and show both.
set -euo pipefail
cd "$(dirname "$0")/.."
NSINIT=${NSINIT:-$PWD/bin/nsinit}
export NSINIT
img=$(mktemp -d /tmp/nsinit-demo.XXXXXX)
root=""
# tree PID: PID and all its descendants, parents first.
tree() {
	local pids=("$1") i=0
	while [ $i -lt ${#pids[@]} ]; do
		for c in $(cat /proc/"${pids[$i]}"/task/*/children 2>/dev/null); do pids+=("$c"); done
		i=$((i + 1))
	done
	echo "${pids[@]}"
}
cleanup() {
	for r in $root $(cat "$img/restored.pid" 2>/dev/null); do
		kill -9 $(tree "$r") 2>/dev/null || true
	done
	rm -rf "$img"
}
trap cleanup EXIT

# table PID: every task of the tree rooted at PID, as /proc shows it from
# the host: pids, process groups and sessions at every level, parent, state.
table() {
	printf '%-18s %-7s %-18s %-18s %-6s %s\n' NSpid PPid NSpgid NSsid State Command
	for p in $(tree "$1"); do
		awk -v cmd="$(tr '\0\n\t' '   ' </proc/"$p"/cmdline | tr -s ' ' | cut -c1-44)" '
			/^NSpid:/  {$1=""; nspid=$0} /^NSpgid:/ {$1=""; pgid=$0}
			/^NSsid:/  {$1=""; sid=$0}   /^PPid:/   {ppid=$2} /^State:/ {st=$2}
			END {printf "%-18s %-7s %-18s %-18s %-6s %s\n", nspid, ppid, pgid, sid, st, cmd}' \
			/proc/"$p"/status
	done
}

echo "== 1. a tree across three pid namespaces, under nsinit"
"$NSINIT" -- busybox sh demo/tree.sh &
root=$!
# Wait until the innermost namespace's last sleeper exists.
for _ in $(seq 100); do pgrep -f "sleep 1023" >/dev/null && pgrep -f "sleep 1022" >/dev/null && break; sleep 0.1; done
sleep 0.5
table "$root"
original=$(tree "$root")

echo
# NSINIT_DUMP_FLAGS: extra dump options (a test runs this demo inside an
# unprivileged container, where eBPF is refused and it passes --unchecked).
echo "== 2. nsinit dump ${NSINIT_DUMP_FLAGS:+$NSINIT_DUMP_FLAGS }-t $root -D $img --kill"
"$NSINIT" dump ${NSINIT_DUMP_FLAGS:-} -t "$root" -D "$img" --kill
wait "$root" 2>/dev/null || true
root=""
# The killed tasks' pids stay taken until their new parent reaps them.
for _ in $(seq 100); do
	left=0
	for p in $original; do [ -e /proc/"$p" ] && left=1; done
	[ $left = 0 ] && break
	sleep 0.1
done
echo "image: $(du -b "$img/pstree.img" | cut -f1) bytes; $("$NSINIT" show "$img" | grep -c '"pids"') tasks"

echo
echo "== 3. nsinit restore -D $img -d"
"$NSINIT" restore -D "$img" -d --pidfile "$img/restored.pid"
restored=$(cat "$img/restored.pid")
table "$restored"

echo
echo "== 4. nsinit check -t $restored -D $img"
"$NSINIT" check -t "$restored" -D "$img" && echo "check: the restored tree matches the image exactly"
