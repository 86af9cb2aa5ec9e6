//go:build ignore

// SPDX-License-Identifier: GPL-2.0
//
// subreaper.bpf.c: which processes are child subreapers. The kernel keeps
// PR_SET_CHILD_SUBREAPER in signal->is_child_subreaper and shows it nowhere
// (not in /proc; PR_GET_CHILD_SUBREAPER answers for the caller only). This
// task iterator walks every task of the reader's pid namespace and writes
// the level-0 tgid (the kernel's own number, task->tgid) of each thread
// group leader whose process has the flag, as a native-endian u32.
// bpf/subreaper.go is the Go side; docs/ebpf.md says more.

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* CO-RE matches signal_struct___sub with the kernel's signal_struct (the
 * suffix is ignored); core.h's signal_struct, shared with trace.bpf.c,
 * stays as it is. */
struct signal_struct___sub {
	unsigned int is_child_subreaper:1;
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

SEC("iter/task")
int subreapers(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct signal_struct___sub *sig;
	u32 tgid;

	if (!task)
		return 0;
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0; /* the flag is the process's: report it once */
	sig = (struct signal_struct___sub *)BPF_CORE_READ(task, signal);
	if (!sig || !BPF_CORE_READ_BITFIELD_PROBED(sig, is_child_subreaper))
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	bpf_seq_write(seq, &tgid, sizeof(tgid));
	return 0;
}
