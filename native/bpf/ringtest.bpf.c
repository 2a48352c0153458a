// SPDX-License-Identifier: GPL-2.0
/*
 * ringtest.bpf.c - TEST/BENCHMARK-ONLY record producer for the ring consumer (lib/ring.ts).
 *
 * Emits struct kvmfault_event records of kind KF_TEST whose fields are all derived from a
 * sequence number, so a consumer can check order (gpa = seq) and integrity (every other field)
 * of each record it receives. Two producers share the ring and the sequence:
 *   - emit (SEC("syscall")): run with BPF_PROG_TEST_RUN; emits `count` records at in-kernel
 *     speed with bpf_loop, every `discard_every`-th one reserved and then DISCARDED (tests that
 *     consumers skip discarded records). Exact counts, no syscall in the way.
 *   - on_getppid (raw_tracepoint sys_enter, getppid only): one record per getppid() of the
 *     process `target_tgid`, for live / wakeup tests and benchmarks. A raw tracepoint needs no
 *     tracefs mount.
 * Never loaded by the tracer.
 */
/* The BPF compile has no arch include dir (no <asm/types.h>, which <linux/types.h> needs), and
 * this program needs no kernel types: define the few fixed-width types here and skip
 * <linux/types.h> (its guard) so <linux/bpf.h> and events.h use these. */
#define _LINUX_TYPES_H
#define __VMLINUX_H__
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "events.h"
#include "ring_submit.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define NR_GETPPID 110 /* x86-64 */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* the loader sets the real size before load */
} ring SEC(".maps");

__u64 next_seq = 0;     /* sequence number of the next record (shared by both producers) */
__u32 target_tgid = 0;  /* on_getppid: process to record; 0 = nobody */

/* Every field is a function of seq; test/20.ring.*.test.ts checks the same formulas. */
static __always_inline void fill(struct kvmfault_event *e, __u64 seq, __u64 pid_tgid)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->vm_id = seq ^ 0x5a5a5a5aULL;
	e->vcpu_id = (__u32)(seq & 0xffff);
	e->kind = KF_TEST;
	e->flags = 0;
	e->gpa = seq;
	e->error_code = seq + 1;
	e->hva = seq + 2;
	e->pfn = seq + 3;
	e->rip = seq + 4;
	e->mmu_seq = seq + 5;
	e->fault_seq = seq + 6;
	e->in_progress = 0;
	e->range_start = seq + 7;
	e->range_end = seq + 8;
	e->ret = (__s32)(seq & 0x7fffffff);
	e->repeat = 1;
}

/* BPF_PROG_TEST_RUN context (ctx_in) of emit(). */
struct emit_args {
	__u32 count;          /* records to attempt (reserve), discarded ones included */
	__u32 discard_every;  /* 0: none; K: every K-th attempt is reserved, then discarded */
	__u32 submitted;      /* out: records submitted by this run */
	__u32 pad;
};

struct emit_ctx {
	__u64 pid_tgid;
	__u32 discard_every;
	__u32 submitted;
};

static long emit_one(__u64 index, void *data)
{
	struct emit_ctx *c = data;
	struct kvmfault_event *e;

	if (c->discard_every && (index % c->discard_every) == c->discard_every - 1) {
		/* reserved then discarded: takes ring space, must never reach a consumer */
		e = bpf_ringbuf_reserve(&ring, sizeof(*e), 0);
		if (!e)
			return 0;
		__builtin_memset(e, 0, sizeof(*e)); /* kind 0: no valid record has it */
		bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	/* the seq is taken before reserving: a dropped record leaves a gap, never a repeat */
	__u64 seq = __sync_fetch_and_add(&next_seq, 1);
	e = kf_reserve(&ring, sizeof(*e));
	if (!e)
		return 0;
	fill(e, seq, c->pid_tgid);
	kf_submit(&ring, e);
	c->submitted++;
	return 0;
}

SEC("syscall")
int emit(struct emit_args *args)
{
	struct emit_ctx c = {
		.pid_tgid = bpf_get_current_pid_tgid(),
		.discard_every = args->discard_every,
	};
	bpf_loop(args->count, emit_one, &c, 0);
	args->submitted = c.submitted;
	return 0;
}

/* One record of the minimal producer: the reference work of bench/probe-cost.ts, wherever it runs. */
static __always_inline void produce(__u64 pid_tgid)
{
	__u64 seq = __sync_fetch_and_add(&next_seq, 1);
	struct kvmfault_event *e = kf_reserve(&ring, sizeof(*e));
	if (!e)
		return;
	fill(e, seq, pid_tgid);
	kf_submit(&ring, e);
}

SEC("raw_tracepoint/sys_enter")
int on_getppid(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] != NR_GETPPID)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(pid_tgid >> 32) != target_tgid || !target_tgid)
		return 0;
	produce(pid_tgid);
	return 0;
}

/*
 * The KVM fault path's floor (bench/probe-cost.ts): what a hit at the tracer's per-fault
 * tracepoints costs before the tracer does anything, and what the minimal producer above costs
 * there instead of at sys_enter. kvm_mmu_pagetable_walk fires on every fault under shadow paging
 * (PVM), kvm_page_fault on every fault of a VMX/SVM exit handler; the bench takes whichever
 * fired. Attached next to the tracer while it runs, so they see the same hits. Loaded only on
 * request (RingTest({ kvmFloor: true })): a kernel without KVM has no such tracepoints. The
 * *_ring programs record every hit of the machine, like the tracer with no pid.
 */
SEC("tp_btf/kvm_mmu_pagetable_walk")
int walk_floor_nop(void *ctx)
{
	return 0;
}

SEC("tp_btf/kvm_mmu_pagetable_walk")
int walk_floor_ring(void *ctx)
{
	produce(bpf_get_current_pid_tgid());
	return 0;
}

SEC("tp_btf/kvm_page_fault")
int pf_floor_nop(void *ctx)
{
	return 0;
}

SEC("tp_btf/kvm_page_fault")
int pf_floor_ring(void *ctx)
{
	produce(bpf_get_current_pid_tgid());
	return 0;
}
