// SPDX-License-Identifier: GPL-2.0
/*
 * kvmfault.bpf.c - the KVM x86 MMU fault-path probes. One object, three probe sets; the loader
 * (native/addon/tracer.cc) switches programs on and off with bpf_program__set_autoload at open:
 *
 *   tracepoint (tb_* typed tp_btf, rt_* raw_tracepoint fallback):
 *     FAULT  kvmmmu:kvm_mmu_pagetable_walk (shadow paging) / kvm:kvm_page_fault (VMX/SVM)
 *     MAP    kvmmmu:kvm_mmu_spte_requested (struct kvm_page_fault *)
 *     INVALIDATE_START kvm:kvm_unmap_hva_range (comm + kernel stack id: who invalidated)
 *     EXIT   kvm:kvm_exit (also remembers the thread's vCPU)
 *   kprobe (kp_/kr_): FAULT/FAULT_RET on the page-fault handlers, FAULTIN/FAULTIN_RET on the
 *     fault-in function; targets resolved from kallsyms at attach time (SEC("kprobe") has none).
 *   fentry (fe_/fx_): the same points, typed; targets set with bpf_program__set_attach_target.
 * MAP / INVALIDATE / EXIT tracepoints are attached in every mode; the FAULT-entry tracepoints
 * only in tracepoint mode (the handler probes give FAULT otherwise). In kprobe / fentry mode
 * INVALIDATE_START comes from kvm_mmu_notifier_invalidate_range_start instead of the
 * tracepoint where that function can be probed: it has the VM and the range's reason code.
 *
 * Every record goes through ring_submit.bpf.h (drop counter, wakeup_bytes policy): filled in
 * place in its ring slot (open_record / close_record), or built on the stack and copied by emit()
 * where it must be kept or compared first (held walks, coalescing, invalidations).
 * Cost per hit (bench/probe-cost.ts, issue 14): every program checks the pid filter before it
 * touches a map; typed programs (tp_btf, fentry/fexit) read their BTF-typed arguments with plain
 * loads instead of bpf_probe_read_kernel, and keep per-thread state in task storage instead of
 * per-tid hashes; raw_tp / kprobe programs (untyped) keep the helper reads and the hashes.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"
#include "kvm_core.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- settings (rodata, written by the loader between open and load) ---------------------- */
const volatile __u32 targ_tgid = 0;          /* 0: every process */
const volatile bool coalesce = false;         /* fold identical consecutive records per tid+kind */
const volatile __u64 coalesce_flush_ns = 100000000; /* emit a fold at least this often */
const volatile __u32 coalesce_max = 1u << 20; /* ... or when it stands for this many events */
const volatile bool pairing_by_hash = false;  /* kprobe mode: the handler pairing is handler_ctx */
const volatile bool emit_exits = false;       /* EXIT records (kvm_exit fires on every exit) */
const volatile bool range_is_gfn = false;     /* kvm->mmu_invalidate_range_* unit (see kvm_core) */
const volatile __u64 vm_id_key = 0;           /* random per tracer: vm_id is not a kernel pointer */
const volatile bool invalidation_stacks = true; /* INVALIDATE_START carries the kernel stack id */
/* KVM's structs are in vmlinux BTF (KVM built in) and the kernel has bpf_rdonly_cast (6.2+): the
 * typed programs then read a cached vCPU / VM with plain loads (BPF_PROBE_MEM) instead of
 * bpf_probe_read_kernel() calls. The loader decides; false keeps the kfunc call dead code, which
 * the verifier removes (6.1: no such kfunc; KVM as a module: its types are not vmlinux's). */
const volatile bool kvm_typed_cast = false;
/* RET_PF_* of this kernel, from its BTF (an anonymous enum: CO-RE cannot relocate it). The
 * probes record ret as is; the values live here so the loaded object states what it was loaded
 * with (bpftool map dump of .rodata) and in-kernel filters can use them without hard-coding. */
const volatile __s32 ret_pf_continue = KF_UNKNOWN_RET;
const volatile __s32 ret_pf_retry = KF_UNKNOWN_RET;
const volatile __s32 ret_pf_emulate = KF_UNKNOWN_RET;
const volatile __s32 ret_pf_fixed = KF_UNKNOWN_RET;
const volatile __s32 ret_pf_spurious = KF_UNKNOWN_RET;

#include "ring_submit.bpf.h"

/* ---- maps ---------------------------------------------------------------------------------- */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);  /* loader: bpf_map__set_max_entries(ringBytes) */
} ring SEC(".maps");

/* tid -> struct kvm_vcpu *, learned from probes that have the vCPU (kvm_exit, kvm_page_fault,
 * kprobe/fentry args) for probes that only have the fault. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} vcpu_of_tid SEC(".maps");

/* tgid -> struct kvm * seen last: the VM an invalidation in that process belongs to. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} kvm_of_tgid SEC(".maps");

/* Kernel stacks of the invalidating tasks, by id (INVALIDATE_START's stack_id). User space reads
 * an id once and keeps its source (lib/sources.ts); a host has a few dozen distinct stacks, so
 * 4096 slots rarely collide (a collision records -EEXIST, never another stack's id). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 4096);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, KF_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

/* entry -> return pairing (kprobe/kretprobe, fentry/fexit), per thread. depth: the handlers
 * nest on some kernels (kvm_tdp_page_fault -> direct_page_fault on 6.1): one FAULT per fault. */
struct entry_ctx {
	__u64 vcpu;
	__u64 fault;
	__u64 gpa;
	__u64 error_code;
	__u32 depth;
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct entry_ctx);
} handler_ctx SEC(".maps"), faultin_ctx SEC(".maps");

/* coalescing: (tid << 8 | kind) -> the last record emitted and how many identical ones since */
struct fold {
	struct kvmfault_event last;
	__u64 first_ts;   /* time of the first folded event not yet emitted */
	__u32 folded;     /* identical events since `last` was emitted */
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct fold);
} folds SEC(".maps");
static struct fold zero_fold;  /* .bss: initial value for a new fold */

/* Shadow-paging fault entries held back per thread until it is known what the walk was for.
 * kvm_mmu_pagetable_walk fires for every guest page-table walk: a real fault's, and also the
 * instruction emulator's gva->gpa walks (two per emulated instruction under PVM; on VMX/SVM the
 * only walks it sees). Held walks are emitted as FAULT when the next walk or an spte request
 * follows, or when the vCPU goes to userspace; dropped (counted) when the emulator takes over
 * (kvm:kvm_emulate_insn fires right after its walks). A fault abandoned as stale is followed
 * by another walk of the same address, so it is still emitted, one walk later. */
#define HELD_WALKS 2
struct held_walks {
	struct kvmfault_event ev[HELD_WALKS];
	__u32 n;
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct held_walks);
} held SEC(".maps");
static struct held_walks zero_held;  /* .bss: initial value for a new entry */

/* Per-thread state of the typed programs (tp_btf, fentry/fexit: BPF_PROG_TYPE_TRACING, which
 * may use task-local storage on every kernel with BTF-typed probes): found from the task itself,
 * no hashing and no LRU, freed with the thread. The untyped programs (raw_tp, kprobe) keep the
 * per-tid hashes above: those program types got the task-storage helpers only in later kernels. */
struct thread_state {
	/* The vCPU a typed probe saw last on this thread (kvm_exit precedes every fault of a
	 * KVM_RUN) and what is fixed about it: its notifier (what current_vcpu() finds), its VM,
	 * vm_id and vcpu_id, so the probes that have no vCPU argument need not read them again. */
	__u64 vcpu;
	__u64 notifier;
	__u64 kvm;
	__u64 vm_id;
	__u32 vcpu_id;
	__u32 pad;
	__u64 remembered_kvm;  /* what this thread last wrote to kvm_of_tgid, and when */
	__u64 remembered_ns;
	struct entry_ctx handler;  /* fentry/fexit pairing of the fault handler */
	struct entry_ctx faultin; /* ... of the fault-in function */
	struct held_walks held;   /* the tp_btf walk / spte / emulate / userspace-exit programs' */
};
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} threads SEC(".maps");

/* A kernel pointer as a read-only typed pointer (its loads cannot fault the kernel). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* walks dropped because the instruction emulator made them (bss, read by the loader) */
__u64 kf_emulator_walks = 0;

/* ---- record helpers ------------------------------------------------------------------------ */

static __always_inline __u64 vm_hash(__u64 kvm)
{
	return kf_vm_hash(kvm, vm_id_key);
}

/* bpf_get_current_pid_tgid()'s value (global tgid << 32 | tid). typed: a tracing program, which
 * may load them from its task: cheaper than the helper call (measured: bench/RESULTS.md). */
static __always_inline __u64 current_id(bool typed)
{
	if (typed) {
		struct task_struct *task = bpf_get_current_task_btf();
		return ((__u64)(__u32)task->tgid << 32) | (__u32)task->pid;
	}
	return bpf_get_current_pid_tgid();
}

/* The pid filter: every program checks it first, before it writes any map. */
static __always_inline bool wanted(__u64 pid_tgid)
{
	return !targ_tgid || (__u32)(pid_tgid >> 32) == targ_tgid;
}

/* Every field unknown, identity of the current thread (id: bpf_get_current_pid_tgid()) filled in. */
static __always_inline void init_record(struct kvmfault_event *e, __u64 id, __u16 kind)
{
	__u32 tgid = id >> 32;
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = tgid;
	e->tid = (__u32)id;
	e->vm_id = KF_UNKNOWN_U64;
	e->vcpu_id = KF_UNKNOWN_U32;
	e->kind = kind;
	e->flags = 0;
	e->gpa = KF_UNKNOWN_U64;
	e->error_code = KF_UNKNOWN_U64;
	e->hva = KF_UNKNOWN_U64;
	e->pfn = KF_UNKNOWN_U64;
	e->rip = KF_UNKNOWN_U64;
	e->mmu_seq = KF_UNKNOWN_U64;
	e->fault_seq = KF_UNKNOWN_U64;
	e->in_progress = KF_UNKNOWN_S64;
	e->range_start = KF_UNKNOWN_U64;
	e->range_end = KF_UNKNOWN_U64;
	e->ret = KF_UNKNOWN_RET;
	e->repeat = 1;
}

/* A record on the caller's stack (held walks, coalescing, invalidations). Returns false when the
 * pid filter rejects the thread. */
static __always_inline bool begin(struct kvmfault_event *e, __u16 kind, bool typed)
{
	__u64 id = current_id(typed);
	if (!wanted(id))
		return false;
	init_record(e, id, kind);
	return true;
}

/* The per-thread state of a typed program (NULL if it cannot be had: out of memory). */
static __always_inline struct thread_state *thread_state(bool create)
{
	return bpf_task_storage_get(&threads, bpf_get_current_task_btf(), NULL,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* Refresh of kvm_of_tgid by a thread whose VM did not change: at most this often. */
#define REMEMBER_KVM_NS 1000000ULL

/* The VM this process runs, for invalidations (their tracepoint has no kvm): "the VM this process
 * ran last", to within REMEMBER_KVM_NS. With the thread's state t (typed programs) a thread
 * whose VM is the one it wrote less than that ago skips the map (a hash lookup was 60 of a MAP
 * record's ~370 ns); a thread's VM change is written at once. Exact for the usual one VM per
 * process; with several VMs in one process the pid names one of them either way (the
 * tracepoint's records say so: KF_FLAG_VM_BY_PID, and lib/sources.ts decides by memslot). */
static __always_inline void remember_kvm(struct thread_state *t, __u32 tgid, __u64 k, __u64 now)
{
	if (!k)
		return;
	if (t) {
		if (t->remembered_kvm == k && now - t->remembered_ns < REMEMBER_KVM_NS)
			return;
		t->remembered_kvm = k;
		t->remembered_ns = now;
	}
	__u64 *seen = bpf_map_lookup_elem(&kvm_of_tgid, &tgid);
	if (!seen || *seen != k)
		bpf_map_update_elem(&kvm_of_tgid, &tgid, &k, BPF_ANY);
}

/* The vCPU's RIP from the register cache: fresh only if the exit path marked it available.
 * regs_avail follows regs[] (RIP is the last register) in struct kvm_vcpu_arch. typed: vcpu is
 * a BTF pointer (tp_btf / fentry argument), read with plain loads; else one span_read(). */
static __always_inline void fill_rip(struct kvmfault_event *e, struct kvm_vcpu *vcpu, bool typed)
{
	__u8 buf[KF_SPAN_MAX];
	int rip_idx = bpf_core_enum_value(enum kvm_reg, VCPU_REGS_RIP);
	if (rip_idx < 0 || rip_idx >= 17)
		return;
	bool avail = bpf_core_field_exists(vcpu->arch.regs_avail);
	if (typed) {
		e->rip = vcpu->arch.regs[rip_idx];
		if (avail && !(vcpu->arch.regs_avail & (1u << rip_idx)))
			e->flags |= KF_FLAG_RIP_STALE;
		return;
	}
	__u32 rip_off = bpf_core_field_offset(vcpu->arch.regs) + rip_idx * 8;
	__u32 rip_hi = avail ? FIELD_END(vcpu->arch.regs_avail) : rip_off + 8;
	if (span_read(buf, vcpu, rip_off, rip_hi)) {
		e->rip = span_field(buf, rip_off, rip_off, 8);
		if (avail && !(SPAN_FIELD(buf, rip_off, vcpu->arch.regs_avail) & (1u << rip_idx)))
			e->flags |= KF_FLAG_RIP_STALE;
	}
}

/* The VM's invalidation state (typed: kvm is a BTF pointer) and the range's unit. */
static __always_inline void fill_vm_state(struct kvmfault_event *e, struct kvm *kvm, bool typed)
{
	if (typed)
		kvm_invalidate_state_typed(kvm, &e->mmu_seq, &e->in_progress, &e->range_start, &e->range_end);
	else
		kvm_invalidate_state(kvm, &e->mmu_seq, &e->in_progress, &e->range_start, &e->range_end);
	if (range_is_gfn)
		e->flags |= KF_FLAG_RANGE_GFN;
}

/* The VM's invalidation state and the vCPU's identity and RIP, for a vCPU pointer that is only
 * a number: three reads (the vCPU's head, its RIP slot + regs_avail, the VM's invalidation
 * fields), see span_read(). */
static __always_inline struct kvm *fill_vcpu(struct kvmfault_event *e, struct kvm_vcpu *vcpu)
{
	__u8 buf[KF_SPAN_MAX];
	if (!vcpu)
		return NULL;
	__u32 lo = bpf_core_field_offset(vcpu->kvm);
	__u32 hi = FIELD_END(vcpu->vcpu_id);
	if (hi < FIELD_END(vcpu->kvm))
		hi = FIELD_END(vcpu->kvm);
	if (!span_read(buf, vcpu, lo, hi))
		return NULL;
	struct kvm *kvm = (struct kvm *)SPAN_FIELD(buf, lo, vcpu->kvm);
	if (!kvm || kvm == (struct kvm *)KF_UNKNOWN_U64)
		return NULL;
	e->vcpu_id = SPAN_FIELD(buf, lo, vcpu->vcpu_id);
	e->vm_id = vm_hash((__u64)kvm);
	fill_rip(e, vcpu, false);
	fill_vm_state(e, kvm, false);
	return kvm;
}

/* Caches the identity of the vCPU running on this thread (see struct thread_state). */
static __always_inline void cache_vcpu(struct thread_state *t, __u64 vcpu, __u64 kvm, __u32 vcpu_id, __u64 vm_id)
{
	t->vcpu = vcpu;
	t->notifier = vcpu + bpf_core_field_offset(struct kvm_vcpu, preempt_notifier) +
		      bpf_core_field_offset(struct preempt_notifier, link);
	t->kvm = kvm;
	t->vm_id = vm_id;
	t->vcpu_id = vcpu_id;
}

/* Caches a typed vCPU's fixed identity in the thread's state (see struct thread_state); plain
 * loads. False when the vCPU has no VM. */
static __always_inline bool note_vcpu(struct thread_state *t, struct kvm_vcpu *vcpu)
{
	struct kvm *kvm = vcpu->kvm;
	if (!kvm)
		return false;
	if (t->vcpu != (__u64)vcpu || t->kvm != (__u64)kvm) {
		/* no arithmetic on a BTF pointer: hash the number the map value holds */
		t->kvm = (__u64)kvm;
		cache_vcpu(t, (__u64)vcpu, t->kvm, vcpu->vcpu_id, vm_hash(*(volatile __u64 *)&t->kvm));
	}
	return true;
}

/* fill_vcpu() for a vCPU that is a typed argument (tp_btf / fentry): no helper call. Returns
 * the VM as a number (for remember_kvm), 0 without one. */
static __always_inline __u64 fill_vcpu_typed(struct kvmfault_event *e, struct kvm_vcpu *vcpu,
					     struct thread_state *t)
{
	if (!vcpu)
		return 0;
	if (!t)  /* no thread state (out of memory): the helper reads */
		return (__u64)fill_vcpu(e, vcpu);
	if (!note_vcpu(t, vcpu))
		return 0;
	e->vcpu_id = t->vcpu_id;
	e->vm_id = t->vm_id;
	fill_rip(e, vcpu, true);
	fill_vm_state(e, vcpu->kvm, true);
	return t->kvm;
}

/* What a struct kvm_page_fault says about the fault: one read of the struct and one of the
 * slot, or, typed (fault is a tp_btf / fentry argument), plain loads from the kernel's own. */
static __always_inline void fill_fault(struct kvmfault_event *e, struct kvm_page_fault *fault, bool with_pfn,
				       bool typed)
{
	__u8 buf[KF_SPAN_MAX];
	struct kvm_page_fault *f = typed ? fault : fault ? fault_copy(buf, fault) : NULL;
	if (!f)
		return;
	__u64 gfn = f->gfn;
	bool tdp = f->is_tdp;
	/* fault->addr is a guest-virtual address under shadow paging: gfn is the physical page */
	e->gpa = tdp ? f->addr : gfn << 12;
	e->error_code = fault_error_code(f);
	e->hva = fault_hva(f, gfn, typed);
	e->fault_seq = fault_seq(f);
	if (with_pfn)
		e->pfn = f->pfn;
	if (f->write)
		e->flags |= KF_FLAG_WRITE;
	if (f->exec)
		e->flags |= KF_FLAG_EXEC;
	if (f->present)
		e->flags |= KF_FLAG_PRESENT;
	if (tdp)
		e->flags |= KF_FLAG_TDP;
}

/* The vCPU running on this thread, for probes that do not get it as an argument.
 * kvm_running_vcpu (per-CPU) would be the direct way, but a __ksym needs data symbols in
 * kallsyms (CONFIG_KALLSYMS_ALL), which some kernels lack (the tracer's mode notes say so). Instead: vcpu_load()
 * registers vcpu->preempt_notifier on current->preempt_notifiers for the whole KVM_RUN, and
 * KVM is the only in-tree user of preempt notifiers, so the list head is that vCPU's notifier.
 * Fallback: the vCPU a typed probe saw last on this thread. typed: the caller is a tracing
 * program with the thread's state t (may be NULL); the head is then a plain load, and when it is
 * the notifier of the vCPU t caches, *cached says so (its identity need not be read again). */
static __always_inline struct kvm_vcpu *current_vcpu(struct thread_state *t, bool typed, bool *cached)
{
	*cached = false;
	if (bpf_core_field_exists(struct task_struct, preempt_notifiers)) {
		struct hlist_node *n;
		if (typed) {
			n = bpf_get_current_task_btf()->preempt_notifiers.first;
			if (t && t->vcpu && t->notifier == (__u64)n) {
				*cached = true;
				return (struct kvm_vcpu *)t->vcpu;
			}
		}
		struct task_struct *task = (void *)bpf_get_current_task();
		n = BPF_CORE_READ(task, preempt_notifiers.first);
		if (n)
			return (void *)((char *)n -
					bpf_core_field_offset(struct kvm_vcpu, preempt_notifier) -
					bpf_core_field_offset(struct preempt_notifier, link));
	}
	if (typed)
		return t ? (struct kvm_vcpu *)t->vcpu : NULL;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *v = bpf_map_lookup_elem(&vcpu_of_tid, &tid);
	return v ? (struct kvm_vcpu *)*v : NULL;
}

/* The untyped programs' record of the thread's vCPU (the typed ones: note_vcpu()). */
static __always_inline void remember_vcpu(struct kvm_vcpu *vcpu)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 v = (__u64)vcpu;
	__u64 *seen = bpf_map_lookup_elem(&vcpu_of_tid, &tid);
	if (!seen || *seen != v)
		bpf_map_update_elem(&vcpu_of_tid, &tid, &v, BPF_ANY);
}

/* The current vCPU's identity, RIP and VM state for a probe without a vCPU argument: from the
 * thread's cache plus two reads (RIP, VM state) when the running vCPU is the cached one, else
 * fill_vcpu()'s three. Returns the VM (a number), 0 if unknown. */
static __always_inline __u64 fill_current_vcpu(struct kvmfault_event *e, struct thread_state *t, bool typed)
{
	bool cached;
	struct kvm_vcpu *vcpu = current_vcpu(t, typed, &cached);
	if (!cached || !t) {
		struct kvm *kvm = fill_vcpu(e, vcpu);
		/* Cache what was read: where no probe has the vCPU as an argument (no kvm_exit /
		 * kvm_page_fault under PVM) this is the only place the cache gets filled. */
		if (kvm && t)
			cache_vcpu(t, (__u64)vcpu, (__u64)kvm, e->vcpu_id, e->vm_id);
		return (__u64)kvm;
	}
	e->vcpu_id = t->vcpu_id;
	e->vm_id = t->vm_id;
	/* typed: a tracing program (kfuncs allowed); in the others this is compiled out */
	if (typed && kvm_typed_cast) {
		fill_rip(e, bpf_rdonly_cast((void *)t->vcpu, bpf_core_type_id_kernel(struct kvm_vcpu)), true);
		fill_vm_state(e, bpf_rdonly_cast((void *)t->kvm, bpf_core_type_id_kernel(struct kvm)), true);
		return t->kvm;
	}
	fill_rip(e, vcpu, false);
	fill_vm_state(e, (struct kvm *)t->kvm, false);
	return t->kvm;
}

static __always_inline void submit_copy(const struct kvmfault_event *src)
{
	struct kvmfault_event *e = kf_reserve(&ring, sizeof(*e));  /* counts a drop when full */
	if (!e)
		return;
	__builtin_memcpy(e, src, sizeof(*e));
	kf_submit(&ring, e);
}

/* Identical = every field but the time (pid/tid are the key, repeat is the count). */
static __always_inline bool same_record(const struct kvmfault_event *a, const struct kvmfault_event *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	/* words 2..14: vm_id .. range_end; then ret (word 14 low half) */
#pragma unroll
	for (int i = 2; i < 14; i++)
		if (x[i] != y[i])
			return false;
	return a->ret == b->ret;
}

/*
 * Hand a finished record to user space. With coalescing, the first of a run of identical
 * records (same tid, same kind) goes out at once with repeat = 1; the identical ones after it
 * are counted and go out as ONE record with repeat = N and KF_FLAG_COALESCED when a different
 * record of that kind arrives, every coalesce_flush_ns, or at coalesce_max. Its ts_ns is the
 * last folded event's. The sum of repeat over records is the number of events.
 */
static __always_inline void emit(struct kvmfault_event *e)
{
	if (!coalesce) {
		submit_copy(e);
		return;
	}
	__u64 key = ((__u64)e->tid << 8) | e->kind;
	struct fold *f = bpf_map_lookup_elem(&folds, &key);
	if (f && same_record(&f->last, e)) {
		if (f->folded == 0)
			f->first_ts = e->ts_ns;
		f->folded++;
		f->last.ts_ns = e->ts_ns;
		if (e->ts_ns - f->first_ts >= coalesce_flush_ns || f->folded >= coalesce_max) {
			f->last.repeat = f->folded;
			f->last.flags |= KF_FLAG_COALESCED;
			submit_copy(&f->last);
			f->last.flags &= ~KF_FLAG_COALESCED;
			f->last.repeat = 1;
			f->folded = 0;
		}
		return;
	}
	if (f) {
		if (f->folded) {  /* the run that just ended */
			f->last.repeat = f->folded;
			f->last.flags |= KF_FLAG_COALESCED;
			submit_copy(&f->last);
		}
		__builtin_memcpy(&f->last, e, sizeof(*e));
		f->folded = 0;
	} else {
		/* from a zeroed template in .bss, then filled in place: a struct fold on the stack
		 * in each inlined emit() would exceed the 512-byte BPF stack */
		bpf_map_update_elem(&folds, &key, &zero_fold, BPF_NOEXIST);
		f = bpf_map_lookup_elem(&folds, &key);
		if (f)
			__builtin_memcpy(&f->last, e, sizeof(*e));
	}
	submit_copy(e);
}

/*
 * The record of a hit, filled in place: without coalescing a ring slot reserved at once (one
 * reservation, no copy), else the caller's stack record, which emit() compares with the thread's
 * last one first. NULL when the ring is full (counted). The pid filter ran before (wanted()).
 * `coalesce` is read-only data: the verifier knows it, and only one branch exists for it.
 */
static __always_inline struct kvmfault_event *open_record(struct kvmfault_event *stack, __u64 id, __u16 kind)
{
	struct kvmfault_event *e = coalesce ? stack : kf_reserve(&ring, sizeof(*e));
	if (e)
		init_record(e, id, kind);
	return e;
}

static __always_inline void close_record(struct kvmfault_event *e)
{
	if (coalesce)
		emit(e);
	else
		kf_submit(&ring, e);
}

/* ---- shared handlers (one body per point, called by the tp_btf / raw_tp / kprobe / fentry
 * programs below) ---------------------------------------------------------------------------- */

/* The thread's held walks: task storage in the typed programs, the per-tid hash in the raw_tp
 * ones (a kernel offers typed tracepoints for all of KVM's or none: one kind holds, the same
 * kind flushes). create: make an empty entry when there is none. */
static __always_inline struct held_walks *held_of(struct thread_state *t, __u32 tid, bool typed, bool create)
{
	if (typed)
		return t ? &t->held : NULL;
	struct held_walks *h = bpf_map_lookup_elem(&held, &tid);
	if (!h && create) {
		bpf_map_update_elem(&held, &tid, &zero_held, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&held, &tid);
	}
	return h;
}

/* Emits the thread's held walks as FAULT records, oldest first. */
static __always_inline void flush_held_walks(struct held_walks *h)
{
	if (!h || !h->n)
		return;
	emit(&h->ev[0]);
	if (h->n > 1)
		emit(&h->ev[1]);
	h->n = 0;
}

static __always_inline int on_pagetable_walk(__u64 addr, __u32 pferr, bool typed)
{
	struct kvmfault_event e;
	if (!begin(&e, KF_FAULT, typed))
		return 0;
	struct thread_state *t = typed ? thread_state(true) : NULL;
	/* Shadow paging walks the guest's tables for a guest-VIRTUAL address: addr is a gva here
	 * (identical to the gpa only for identity-mapped guests). No vCPU argument. */
	e.gpa = addr;
	e.error_code = pferr;
	fill_current_vcpu(&e, t, typed);

	struct held_walks *h = held_of(t, e.tid, typed, true);
	if (!h) {  /* no room to hold it: emit at once */
		emit(&e);
		return 0;
	}
	if (h->n >= HELD_WALKS) {  /* the oldest walk got neither an spte nor emulation */
		emit(&h->ev[0]);
		__builtin_memcpy(&h->ev[0], &h->ev[1], sizeof(e));
		h->n = HELD_WALKS - 1;
	}
	__u32 i = h->n;
	if (i >= HELD_WALKS)  /* bounds for the verifier */
		return 0;
	__builtin_memcpy(&h->ev[i], &e, sizeof(e));
	h->n = i + 1;
	return 0;
}

/* The instruction emulator ran: the held walks were its own, not page faults. */
static __always_inline int on_emulate_insn(bool typed)
{
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct held_walks *h = held_of(typed ? thread_state(false) : NULL, (__u32)id, typed, false);
	if (h && h->n) {
		__sync_fetch_and_add(&kf_emulator_walks, h->n);
		h->n = 0;
	}
	return 0;
}

/* KVM_RUN returns to userspace: walks still held were faults that did not get an spte. */
static __always_inline int on_userspace_exit(bool typed)
{
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	flush_held_walks(held_of(typed ? thread_state(false) : NULL, (__u32)id, typed, false));
	return 0;
}

/* kvm:kvm_page_fault (VMX/SVM exit handlers): the vCPU is an argument */
static __always_inline int on_page_fault_tp(struct kvm_vcpu *vcpu, __u64 addr, __u64 error_code, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(true) : NULL;
	if (!typed)
		remember_vcpu(vcpu);
	struct kvmfault_event *e = open_record(&stack, id, KF_FAULT);
	if (!e)
		return 0;
	e->gpa = addr;
	e->error_code = error_code;
	__u64 kvm = typed ? fill_vcpu_typed(e, vcpu, t) : (__u64)fill_vcpu(e, vcpu);
	__u64 now = e->ts_ns;
	close_record(e);
	remember_kvm(t, id >> 32, kvm, now);
	return 0;
}

static __always_inline int on_spte_requested(struct kvm_page_fault *fault, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(false) : NULL;
	/* the fault's own walk (and any unmapped one before it) first: before this record's slot */
	flush_held_walks(held_of(t, (__u32)id, typed, false));
	struct kvmfault_event *e = open_record(&stack, id, KF_MAP);
	if (!e)
		return 0;
	__u64 kvm = fill_current_vcpu(e, t, typed);
	fill_fault(e, fault, true, typed);
	__u64 now = e->ts_ns;
	close_record(e);
	remember_kvm(t, id >> 32, kvm, now);
	return 0;
}

/* An mmu_notifier invalidation of [start, end) (host virtual addresses). Runs in the task that
 * changed the mapping (madvise, munmap, ksmd, khugepaged, kcompactd, kswapd, a task doing NUMA
 * hinting), not a vCPU: the record says who (comm, kernel stack) so user space can name the
 * source. kvm: from the notifier probes; the tracepoint has none, so the VM is the one this
 * process ran last (right for the VMM's own invalidations, unknown for kernel threads). event:
 * the range's enum mmu_notifier_event, KF_UNKNOWN_U32 from the tracepoint. */
static __always_inline int on_invalidate(void *ctx, __u64 start, __u64 end, struct kvm *kvm, __u32 event)
{
	struct kvmfault_event e;
	if (!begin(&e, KF_INVALIDATE_START, false))
		return 0;
	if (kvm) {
		e.vm_id = vm_hash((__u64)kvm);
	} else {
		e.flags |= KF_FLAG_VM_BY_PID;
		__u64 *k = bpf_map_lookup_elem(&kvm_of_tgid, &e.pid);
		if (k)
			e.vm_id = vm_hash(*k);
	}
	e.range_start = start;  /* always hva here, whatever the kernel's kvm range unit */
	e.range_end = end;
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	if (invalidation_stacks)
		e.stack_id = bpf_get_stackid(ctx, &stacks, 0);
	e.range_event = event;
	emit(&e);
	return 0;
}

static __always_inline int on_unmap_hva_range(void *ctx, __u64 start, __u64 end)
{
	return on_invalidate(ctx, start, end, NULL, KF_UNKNOWN_U32);
}

/* kvm_mmu_notifier_invalidate_range_start(mn, range): the VM is container_of(mn, struct kvm,
 * mmu_notifier), the reason range->event. Used instead of the tracepoint where it attaches. */
static __always_inline int on_notifier_range_start(void *ctx, struct mmu_notifier *mn,
						   const struct mmu_notifier_range *range)
{
	struct kvm *kvm = (void *)((char *)mn - bpf_core_field_offset(struct kvm, mmu_notifier));
	__u64 start = BPF_CORE_READ(range, start);
	__u64 end = BPF_CORE_READ(range, end);
	__u32 event = bpf_core_field_exists(range->event) ? (__u32)BPF_CORE_READ(range, event) : KF_UNKNOWN_U32;
	return on_invalidate(ctx, start, end, mn ? kvm : NULL, event);
}

static __always_inline int on_kvm_exit(struct kvm_vcpu *vcpu, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = NULL;
	if (typed) {
		t = thread_state(true);
		if (t && vcpu)  /* a tracepoint argument may be NULL as far as the verifier knows */
			note_vcpu(t, vcpu);  /* every fault of this exit finds its vCPU here */
		if (t)
			t->handler.depth = 0;  /* see below */
	} else {
		remember_vcpu(vcpu);
	}
	/* No fault handler runs on this thread at a VM exit: a pairing left open by a return the
	 * probes missed (a kretprobe over maxactive, a call already running when the probes went
	 * on) would otherwise hide every later FAULT of the thread as "nested". */
	if (pairing_by_hash) {
		__u32 tid = (__u32)id;
		struct entry_ctx *c = bpf_map_lookup_elem(&handler_ctx, &tid);
		if (c && c->depth)
			c->depth = 0;
	}
	if (!emit_exits)
		return 0;
	struct kvmfault_event *e = open_record(&stack, id, KF_EXIT);
	if (!e)
		return 0;
	/* trace_kvm_exit reads RIP through the cache: fresh here */
	if (typed)
		fill_vcpu_typed(e, vcpu, t);
	else
		fill_vcpu(e, vcpu);
	close_record(e);
	return 0;
}

/* The entry -> return pairing of one thread: task storage in fentry/fexit, a hash in kprobes. */
static __always_inline struct entry_ctx *pairing(struct thread_state *t, void *hash, __u32 tid, bool typed,
						 bool faultin, bool create)
{
	if (typed)
		return t ? (faultin ? &t->faultin : &t->handler) : NULL;
	struct entry_ctx *c = bpf_map_lookup_elem(hash, &tid);
	if (!c && create) {
		struct entry_ctx z = {};
		bpf_map_update_elem(hash, &tid, &z, BPF_ANY);
		c = bpf_map_lookup_elem(hash, &tid);
	}
	return c;
}

/* Fills the vCPU and fault fields of an entry / return record. typed: vcpu and fault are the
 * probed function's own (fentry / fexit) arguments; else numbers saved by the entry probe. */
static __always_inline __u64 fill_entry(struct kvmfault_event *e, struct thread_state *t, struct kvm_vcpu *vcpu,
					struct kvm_page_fault *fault, bool with_pfn, bool typed)
{
	__u64 kvm = typed ? fill_vcpu_typed(e, vcpu, t) : (__u64)fill_vcpu(e, vcpu);
	if (fault)
		fill_fault(e, fault, with_pfn, typed);
	return kvm;
}

static __always_inline int on_fault_entry(struct kvm_vcpu *vcpu, struct kvm_page_fault *fault,
					  __u64 gpa, __u64 error_code, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(true) : NULL;
	struct entry_ctx *c = pairing(t, &handler_ctx, (__u32)id, typed, false, true);
	if (!c)
		return 0;
	if (c->depth++ > 0)  /* nested handler of the same fault */
		return 0;
	c->vcpu = (__u64)vcpu;
	c->fault = (__u64)fault;
	c->gpa = gpa;
	c->error_code = error_code;
	if (!typed)
		remember_vcpu(vcpu);

	struct kvmfault_event *e = open_record(&stack, id, KF_FAULT);
	if (!e)
		return 0;
	__u64 kvm = fill_entry(e, t, vcpu, fault, false, typed);
	if (fault) {
		/* fault->mmu_seq is snapshotted inside the fault-in step: still stale here */
		e->fault_seq = KF_UNKNOWN_U64;
	} else {
		e->gpa = gpa;
		e->error_code = error_code;
	}
	__u64 now = e->ts_ns;
	close_record(e);
	remember_kvm(t, id >> 32, kvm, now);
	return 0;
}

/* typed: vcpu and fault are the fexit's own arguments (those of the outermost call, the one
 * whose return this is); else the entry's, saved in the pairing. */
static __always_inline int on_fault_return(int ret, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(false) : NULL;
	struct entry_ctx *c = pairing(t, &handler_ctx, (__u32)id, typed, false, false);
	if (!c || c->depth == 0)
		return 0;  /* attached mid-fault: no entry seen */
	if (--c->depth > 0)
		return 0;
	struct kvmfault_event *e = open_record(&stack, id, KF_FAULT_RET);
	if (!e)
		return 0;
	if (!typed) {
		/* through typed locals: a cast inside BPF_CORE_READ would relocate against
		 * struct entry_ctx (the cast's operand), which no kernel has */
		vcpu = (struct kvm_vcpu *)c->vcpu;
		fault = (struct kvm_page_fault *)c->fault;
	}
	fill_entry(e, t, vcpu, c->fault ? fault : NULL, true, typed);
	if (!c->fault) {
		e->gpa = c->gpa;
		e->error_code = c->error_code;
	}
	e->ret = ret;
	close_record(e);
	return 0;
}

static __always_inline int on_faultin_entry(struct kvm_vcpu *vcpu, struct kvm_page_fault *fault, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(true) : NULL;
	struct entry_ctx *c = pairing(t, &faultin_ctx, (__u32)id, typed, true, true);
	if (c) {
		c->vcpu = (__u64)vcpu;
		c->fault = (__u64)fault;
		c->depth = 1;
	}
	if (!typed)
		remember_vcpu(vcpu);
	struct kvmfault_event *e = open_record(&stack, id, KF_FAULTIN);
	if (!e)
		return 0;
	fill_entry(e, t, vcpu, fault, false, typed);  /* pfn not resolved yet: stays unknown */
	e->fault_seq = KF_UNKNOWN_U64;  /* the snapshot is taken inside this function */
	close_record(e);
	return 0;
}

static __always_inline int on_faultin_return(int ret, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault, bool typed)
{
	struct kvmfault_event stack;
	__u64 id = current_id(typed);
	if (!wanted(id))
		return 0;
	struct thread_state *t = typed ? thread_state(false) : NULL;
	struct entry_ctx *c = pairing(t, &faultin_ctx, (__u32)id, typed, true, false);
	if (!c || !c->depth)
		return 0;
	c->depth = 0;
	struct kvmfault_event *e = open_record(&stack, id, KF_FAULTIN_RET);
	if (!e)
		return 0;
	if (!typed) {
		vcpu = (struct kvm_vcpu *)c->vcpu;
		fault = (struct kvm_page_fault *)c->fault;
	}
	fill_entry(e, t, vcpu, fault, true, typed);
	e->ret = ret;
	close_record(e);
	return 0;
}

/* ---- tracepoint set: tp_btf (typed) ---------------------------------------------------------- */

SEC("tp_btf/kvm_mmu_pagetable_walk")
int BPF_PROG(tb_pagetable_walk, __u64 addr, __u32 pferr)
{
	return on_pagetable_walk(addr, pferr, true);
}

SEC("tp_btf/kvm_page_fault")
int BPF_PROG(tb_page_fault, struct kvm_vcpu *vcpu, __u64 addr, __u64 error_code)
{
	return on_page_fault_tp(vcpu, addr, error_code, true);
}

SEC("tp_btf/kvm_mmu_spte_requested")
int BPF_PROG(tb_spte_requested, struct kvm_page_fault *fault)
{
	return on_spte_requested(fault, true);
}

SEC("tp_btf/kvm_unmap_hva_range")
int BPF_PROG(tb_unmap_hva_range, unsigned long start, unsigned long end)
{
	return on_unmap_hva_range(ctx, start, end);
}

SEC("tp_btf/kvm_exit")
int BPF_PROG(tb_kvm_exit, struct kvm_vcpu *vcpu)
{
	return on_kvm_exit(vcpu, true);
}

SEC("tp_btf/kvm_emulate_insn")
int BPF_PROG(tb_emulate_insn, struct kvm_vcpu *vcpu, __u8 failed)
{
	return on_emulate_insn(true);
}

SEC("tp_btf/kvm_userspace_exit")
int BPF_PROG(tb_userspace_exit, __u32 reason, int err)
{
	return on_userspace_exit(true);
}

/* ---- tracepoint set: raw_tracepoint (untyped args, same order as TP_PROTO) ----------------- */

SEC("raw_tp/kvm_emulate_insn")
int rt_emulate_insn(struct bpf_raw_tracepoint_args *ctx)
{
	return on_emulate_insn(false);
}

SEC("raw_tp/kvm_userspace_exit")
int rt_userspace_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return on_userspace_exit(false);
}

SEC("raw_tp/kvm_mmu_pagetable_walk")
int rt_pagetable_walk(struct bpf_raw_tracepoint_args *ctx)
{
	return on_pagetable_walk(ctx->args[0], (__u32)ctx->args[1], false);
}

SEC("raw_tp/kvm_page_fault")
int rt_page_fault(struct bpf_raw_tracepoint_args *ctx)
{
	return on_page_fault_tp((struct kvm_vcpu *)ctx->args[0], ctx->args[1], ctx->args[2], false);
}

SEC("raw_tp/kvm_mmu_spte_requested")
int rt_spte_requested(struct bpf_raw_tracepoint_args *ctx)
{
	return on_spte_requested((struct kvm_page_fault *)ctx->args[0], false);
}

SEC("raw_tp/kvm_unmap_hva_range")
int rt_unmap_hva_range(struct bpf_raw_tracepoint_args *ctx)
{
	return on_unmap_hva_range(ctx, ctx->args[0], ctx->args[1]);
}

SEC("raw_tp/kvm_exit")
int rt_kvm_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return on_kvm_exit((struct kvm_vcpu *)ctx->args[0], false);
}

/* ---- kprobe set (targets from kallsyms at attach) ------------------------------------------ */

/* fault handlers taking (vcpu, fault): kvm_tdp_page_fault, direct_page_fault, paging64_page_fault */
SEC("kprobe")
int BPF_KPROBE(kp_fault, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault)
{
	return on_fault_entry(vcpu, fault, 0, 0, false);
}

SEC("kretprobe")
int BPF_KRETPROBE(kr_fault, int ret)
{
	return on_fault_return(ret, NULL, NULL, false);
}

/* fallback entry when no handler symbol exists: kvm_mmu_page_fault(vcpu, cr2_or_gpa, error_code, ...).
 * Before 7c5480386300 (6.14) it folds RETRY/FIXED/SPURIOUS into 1: FAULT_RET ret is coarse. */
SEC("kprobe")
int BPF_KPROBE(kp_mmu_page_fault, struct kvm_vcpu *vcpu, __u64 gpa, __u64 error_code)
{
	return on_fault_entry(vcpu, NULL, gpa, error_code, false);
}

SEC("kretprobe")
int BPF_KRETPROBE(kr_mmu_page_fault, int ret)
{
	return on_fault_return(ret, NULL, NULL, false);
}

/* kvm_mmu_faultin_pfn / kvm_faultin_pfn (vcpu, fault[, access]) */
SEC("kprobe")
int BPF_KPROBE(kp_faultin, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault)
{
	return on_faultin_entry(vcpu, fault, false);
}

SEC("kretprobe")
int BPF_KRETPROBE(kr_faultin, int ret)
{
	return on_faultin_return(ret, NULL, NULL, false);
}

/* kvm_mmu_notifier_invalidate_range_start: the VM and the reason code (replaces the
 * kvm_unmap_hva_range tracepoint in this mode) */
SEC("kprobe")
int BPF_KPROBE(kp_notifier_start, struct mmu_notifier *mn, const struct mmu_notifier_range *range)
{
	return on_notifier_range_start(ctx, mn, range);
}

/* ---- fentry set (targets set by the loader; these names are defaults for 6.18) ------------- */

SEC("fentry/kvm_mmu_notifier_invalidate_range_start")
int fe_notifier_start(__u64 *ctx)
{
	/* the arguments as plain numbers: the verifier types them as kernel pointers, and a typed
	 * pointer cannot go through container_of's negative offset and the VM id hash */
	__u64 args[2];
	if (bpf_probe_read_kernel(args, sizeof(args), ctx))
		return 0;
	return on_notifier_range_start(ctx, (struct mmu_notifier *)args[0], (const struct mmu_notifier_range *)args[1]);
}

/* An fexit's first two arguments, (vcpu, fault) in every target: the verifier types ctx loads
 * from the target's BTF, so these are BTF pointers whatever the C cast says. */
#define FX_VCPU(ctx) ((struct kvm_vcpu *)(ctx)[0])
#define FX_FAULT(ctx) ((struct kvm_page_fault *)(ctx)[1])

SEC("fentry/kvm_mmu_faultin_pfn")
int BPF_PROG(fe_faultin, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault)
{
	return on_faultin_entry(vcpu, fault, true);
}

SEC("fexit/kvm_mmu_faultin_pfn")
int fx_faultin(__u64 *ctx)
{
	__u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);  /* independent of the function's argument count */
	return on_faultin_return((int)ret, FX_VCPU(ctx), FX_FAULT(ctx), true);
}

SEC("fentry/kvm_tdp_page_fault")
int BPF_PROG(fe_fault_tdp, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault)
{
	return on_fault_entry(vcpu, fault, 0, 0, true);
}

SEC("fexit/kvm_tdp_page_fault")
int fx_fault_tdp(__u64 *ctx)
{
	__u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	return on_fault_return((int)ret, FX_VCPU(ctx), FX_FAULT(ctx), true);
}

SEC("fentry/paging64_page_fault")
int BPF_PROG(fe_fault_shadow, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault)
{
	return on_fault_entry(vcpu, fault, 0, 0, true);
}

SEC("fexit/paging64_page_fault")
int fx_fault_shadow(__u64 *ctx)
{
	__u64 ret = 0;
	bpf_get_func_ret(ctx, &ret);
	return on_fault_return((int)ret, FX_VCPU(ctx), FX_FAULT(ctx), true);
}
