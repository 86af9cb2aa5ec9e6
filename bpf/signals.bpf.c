//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// signals.bpf.c: the signal state of a process that /proc does not show:
// every handler (task->sighand->action[], sa_handler, sa_flags,
// sa_restorer, sa_mask), the alternate signal stack (sas_ss_*), the
// clear_child_tid address and the parent-death signal. A task iterator
// reports them for each thread of the processes whose level-0 tgid is a
// key of the `wanted` map (the handlers are the process's, the rest the
// thread's), as one record: struct signals_hdr then 64 struct signals_act
// (signal 1 first), native-endian. bpf/signals.go is the Go
// side; `nsinit dump --state` records them (docs/state.md).

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* Any struct matches the kernel's k_sigaction for CO-RE (composites are
 * compatible); only the offset of action[] is relocated, the 32-byte
 * element is x86-64's (struct signals_act below). */
struct k_sigaction___sig {
	u64 words[4];
};

struct sighand_struct___sig {
	struct k_sigaction___sig action[64];
};

struct task_struct___sig {
	int pid;
	int tgid;
	int pdeath_signal;
	int *clear_child_tid;
	unsigned long sas_ss_sp;
	unsigned long sas_ss_size;
	unsigned int sas_ss_flags;
	struct sighand_struct___sig *sighand;
};

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
};

#pragma clang attribute pop

struct signals_hdr {
	u32 tgid;
	u32 pdeath_signal;
	u64 sas_ss_sp;
	u64 sas_ss_size;
	u32 sas_ss_flags;
	u32 tid;
	u64 clear_child_tid;
};

/* x86-64's struct k_sigaction: struct sigaction, 4 words. */
struct signals_act {
	u64 handler;
	u64 flags;
	u64 restorer;
	u64 mask;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, u8);
} wanted SEC(".maps");

SEC("iter/task")
int signals(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct___sig *task = (struct task_struct___sig *)ctx->task;
	struct signals_hdr h = {};
	struct signals_act a;
	char *actions;
	u32 tgid;
	int i;

	if (!task)
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	if (!bpf_map_lookup_elem(&wanted, &tgid))
		return 0;
	actions = (char *)BPF_CORE_READ(task, sighand);
	if (!actions)
		return 0;
	actions += bpf_core_field_offset(struct sighand_struct___sig, action);
	h.tgid = tgid;
	h.tid = BPF_CORE_READ(task, pid);
	h.pdeath_signal = BPF_CORE_READ(task, pdeath_signal);
	h.sas_ss_sp = BPF_CORE_READ(task, sas_ss_sp);
	h.sas_ss_size = BPF_CORE_READ(task, sas_ss_size);
	h.sas_ss_flags = BPF_CORE_READ(task, sas_ss_flags);
	h.clear_child_tid = (u64)BPF_CORE_READ(task, clear_child_tid);
	bpf_seq_write(seq, &h, sizeof(h));
	for (i = 0; i < 64; i++) {
		if (bpf_probe_read_kernel(&a, sizeof(a), actions + i * sizeof(a)))
			__builtin_memset(&a, 0xff, sizeof(a)); /* unreadable: Go refuses it */
		bpf_seq_write(seq, &a, sizeof(a));
	}
	return 0;
}
