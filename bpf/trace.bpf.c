//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// trace.bpf.c: count and report fork, exit and exec of the tasks nsinit
// watches. See docs/ebpf.md for the design; bpf/watcher.go is the Go side.
//
// A task is watched when
//   - its pid at some level i >= 1 lives in a watched pid namespace (the
//     watched_ns map, keyed by namespace inode number; user space pins each
//     namespace with an open fd so the number cannot be recycled), which
//     covers that namespace and every namespace nested below it; or
//   - its level-0 tgid is in watched_tgids (tree tasks living in the host
//     pid namespace, which is never watched whole). A process forked by a
//     watched tgid becomes watched itself, so grandchildren count too.
//
// Every matched event first increments the exact counters (counters[] and
// the per-namespace counter), then is copied into the ring buffer. A full
// ring buffer drops the record but never the count: received + dropped ==
// counters[COUNT_EVENTS].

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_LEVELS 33 /* pid namespace levels 0..32 (MAX_PID_NS_LEVEL) */
#define WAKEUP_BYTES (64 * 1024)

enum kind {
	KIND_FORK = 1,
	KIND_EXIT = 2,
	KIND_EXEC = 3,
};

enum flag {
	FLAG_THREAD = 1,   /* a CLONE_THREAD child, or a non-leader thread exiting */
	FLAG_BY_NS = 2,    /* matched through watched_ns */
	FLAG_BY_TGID = 4,  /* matched through watched_tgids */
	FLAG_GROUP_DEAD = 8, /* exit: the last thread of the process */
};

enum counter {
	COUNT_EVENTS = 0,   /* matched events */
	COUNT_DROPPED = 1,  /* matched events whose record did not fit the ring buffer */
	COUNT_TGID_FULL = 2, /* children that could not be added to watched_tgids */
	NUM_COUNTERS = 3,
};

struct event {
	u32 kind;
	u32 flags;
	u32 level;     /* pid namespace level of the task: pids[0..level] are valid */
	u32 tgid;      /* level-0 tgid of the task (the child for a fork) */
	u32 ptid;      /* fork: level-0 tid of the forking task; else 0 */
	u32 ptgid;     /* fork: level-0 tgid of the forking task; else of the real parent */
	u32 exit_code; /* exit: the wait status (code << 8 | signal) */
	u32 ns_inum;   /* innermost watched namespace matched, 0 if matched by tgid */
	char comm[16];
	u32 pids[MAX_LEVELS]; /* tid at each level, outermost (level 0) first */
};

struct ns_value {
	u64 events; /* events of tasks in this namespace or below it */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32); /* pid namespace inode number */
	__type(value, struct ns_value);
} watched_ns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, u32);   /* level-0 tgid */
	__type(value, u32); /* 1: given by user space, 2: inherited at fork */
} watched_tgids SEC(".maps");

/* A thread group, for as long as the machine runs: its tgid and the start
 * time of its leader. */
struct group_key {
	u32 tgid;
	u32 pad;
	u64 start;
};

/* Groups whose end was reported (see first_group_end). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct group_key);
	__type(value, u8);
} ended_groups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NUM_COUNTERS);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__type(value, struct event); /* makes the type reachable for bpf2go -type */
} events SEC(".maps");

/* Scratch space: an event is built here, then copied to the ring buffer
 * only when it matched (no reserve/discard for every fork on the machine). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct event);
} scratch SEC(".maps");

static __always_inline void count(u32 which)
{
	u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* fill_pids walks the task's pid at every level, records it in e->pids and
 * bumps the counter of every watched namespace it is in or below. It returns
 * whether any level matched. Level 0 is the host namespace, never watched. */
static __always_inline bool fill_pids(struct event *e, struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	u32 level = BPF_CORE_READ(pid, level);
	bool hit = false;

	e->level = level;
	e->ns_inum = 0;
	for (u32 i = 0; i < MAX_LEVELS; i++) {
		struct upid up;

		if (i > level)
			break;
		if (bpf_core_read(&up, sizeof(up), &pid->numbers[i]))
			break;
		e->pids[i] = up.nr;
		if (i == 0)
			continue;
		u32 inum = BPF_CORE_READ(up.ns, ns.inum);
		struct ns_value *v = bpf_map_lookup_elem(&watched_ns, &inum);
		if (v) {
			__sync_fetch_and_add(&v->events, 1);
			e->ns_inum = inum;
			hit = true;
		}
	}
	return hit;
}

static __always_inline struct event *scratch_event(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&scratch, &zero);
}

/* emit counts a matched event, then copies it to the ring buffer, waking the
 * reader only when a good batch is pending (the reader also polls). */
static __always_inline void emit(struct event *e)
{
	count(COUNT_EVENTS);
	u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	u64 flags = avail + sizeof(*e) >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), flags))
		count(COUNT_DROPPED);
}

static __always_inline bool tgid_watched(u32 tgid)
{
	return bpf_map_lookup_elem(&watched_tgids, &tgid) != 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 ptgid = parent->tgid;
	u32 tgid = child->tgid;
	bool thread = child->pid != child->tgid;
	bool by_tgid = tgid_watched(ptgid);

	if (by_tgid && !thread) {
		u32 inherited = 2;
		if (bpf_map_update_elem(&watched_tgids, &tgid, &inherited, BPF_ANY))
			count(COUNT_TGID_FULL);
	}
	/* Threads of a watched process are watched through their tgid. */
	by_tgid = by_tgid || (thread && tgid_watched(tgid));

	struct event *e = scratch_event();
	if (!e)
		return 0;
	bool by_ns = fill_pids(e, child);
	if (!by_ns && !by_tgid)
		return 0;
	e->kind = KIND_FORK;
	e->flags = (thread ? FLAG_THREAD : 0) | (by_ns ? FLAG_BY_NS : 0) | (by_tgid ? FLAG_BY_TGID : 0);
	e->tgid = tgid;
	e->ptid = parent->pid;
	e->ptgid = ptgid;
	e->exit_code = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, child, comm);
	emit(e);
	return 0;
}

/* Every thread of a group leaving through exit_group decrements
 * signal->live before it reaches the exit tracepoint, so several of them
 * can find it at 0 there (seen on 6.1 under TCG): only the first one
 * reports the group's end. */
static bool first_group_end(struct task_struct *task, u32 tgid)
{
	struct group_key k = {
		.tgid = tgid,
		.start = BPF_CORE_READ(task, group_leader, start_time),
	};
	u8 one = 1;

	return bpf_map_update_elem(&ended_groups, &k, &one, BPF_NOEXIST) == 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *task)
{
	u32 tgid = task->tgid;
	bool by_tgid = tgid_watched(tgid);
	/* signal->live was decremented by do_exit before this tracepoint. */
	bool group_dead = BPF_CORE_READ(task, signal, live.counter) == 0;

	struct event *e = scratch_event();
	if (!e)
		return 0;
	bool by_ns = fill_pids(e, task);
	if (by_tgid && group_dead)
		/* The tgid number is free for reuse once reaped: stop watching it. */
		bpf_map_delete_elem(&watched_tgids, &tgid);
	if (!by_ns && !by_tgid)
		return 0;
	if (group_dead)
		group_dead = first_group_end(task, tgid);
	e->kind = KIND_EXIT;
	e->flags = (task->pid != task->tgid ? FLAG_THREAD : 0) | (by_ns ? FLAG_BY_NS : 0) |
		   (by_tgid ? FLAG_BY_TGID : 0) | (group_dead ? FLAG_GROUP_DEAD : 0);
	e->tgid = tgid;
	e->ptid = 0;
	e->ptgid = BPF_CORE_READ(task, real_parent, tgid);
	e->exit_code = task->exit_code;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	emit(e);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task)
{
	u32 tgid = task->tgid;
	bool by_tgid = tgid_watched(tgid);

	struct event *e = scratch_event();
	if (!e)
		return 0;
	bool by_ns = fill_pids(e, task);
	if (!by_ns && !by_tgid)
		return 0;
	e->kind = KIND_EXEC;
	e->flags = (by_ns ? FLAG_BY_NS : 0) | (by_tgid ? FLAG_BY_TGID : 0);
	e->tgid = tgid;
	e->ptid = 0;
	e->ptgid = BPF_CORE_READ(task, real_parent, tgid);
	e->exit_code = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	emit(e);
	return 0;
}
