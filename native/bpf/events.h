/* SPDX-License-Identifier: GPL-2.0 */
/*
 * events.h - the kvmfault record: the single source of truth for its layout.
 *
 * Shared by the BPF programs (native/bpf/<name>.bpf.c), the addon (native/addon/), which exports
 * offsetof() of every field, and the TypeScript reader (lib/record.ts), whose offsets a test
 * checks against those exports. Fixed size, 8-byte aligned, little-endian, fixed-width types
 * only, explicit padding. Never reorder fields: capture files store raw records (the capture
 * header carries a field table, so a reader can still detect a mismatch).
 */
#ifndef KVMFAULT_EVENTS_H
#define KVMFAULT_EVENTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define KVMFAULT_RECORD_VERSION 1

/* What a record is. Values are stable: they are stored in capture files. */
enum kvmfault_kind {
	KF_FAULT = 1,            /* page-fault handler entered (or fault entry tracepoint) */
	KF_FAULTIN = 2,          /* fault-in function entered */
	KF_FAULTIN_RET = 3,      /* fault-in function returned (ret = its return value) */
	KF_MAP = 4,              /* spte requested / installed: the fault is being mapped */
	KF_FAULT_RET = 5,        /* page-fault handler returned (ret = RET_PF_* value) */
	KF_INVALIDATE_START = 6, /* mmu_notifier invalidation began (range in range_start/end) */
	KF_INVALIDATE_END = 7,   /* mmu_notifier invalidation ended */
	KF_EXIT = 8,             /* vCPU exit (rip fresh) */
	KF_TEST = 15,            /* test/benchmark producer only; never from the KVM probes */
};

/* Sentinels for "this probe cannot see the field". Zero is meaningful for most fields, so
 * unknown is never 0: all-ones for unsigned fields, -1 for in_progress (a count, >= 0 when
 * known), INT32_MIN for ret (RET_PF_* and faultin returns are small non-negative values or
 * -errno). */
#define KF_UNKNOWN_U64 0xffffffffffffffffULL
#define KF_UNKNOWN_U32 0xffffffffU
#define KF_UNKNOWN_S64 (-1LL)
#define KF_UNKNOWN_RET ((__s32)0x80000000)

/* flags */
#define KF_FLAG_RANGE_GFN  (1u << 0) /* range_start/end are guest frame numbers (6.8+), else hva */
#define KF_FLAG_WRITE      (1u << 1) /* write fault */
#define KF_FLAG_EXEC       (1u << 2) /* instruction fetch */
#define KF_FLAG_PRESENT    (1u << 3) /* the guest pte / spte was present (protection fault) */
#define KF_FLAG_TDP        (1u << 4) /* fault->is_tdp */
#define KF_FLAG_RIP_STALE  (1u << 5) /* rip read from the register cache, may be old */
#define KF_FLAG_COALESCED  (1u << 6) /* stands for `repeat` (>= 1) events identical to this tid's previous record of this kind */
#define KF_FLAG_VM_BY_PID  (1u << 7) /* INVALIDATE_START from the tracepoint: vm_id is the VM this process ran last
                                      * (or unknown), not the notifier's own VM; lib/sources.ts decides by memslot */

struct kvmfault_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns() */
	__u32 pid;          /* VMM process (tgid) */
	__u32 tid;          /* vCPU thread */
	__u64 vm_id;        /* stable id of the VM: the struct kvm pointer, hashed */
	__u32 vcpu_id;      /* vcpu->vcpu_id */
	__u16 kind;         /* enum kvmfault_kind */
	__u16 flags;        /* KF_FLAG_* */
	union {
		struct {
			__u64 gpa;          /* faulting guest physical address */
			__u64 error_code;   /* #PF / EPT error code */
			__u64 hva;          /* host virtual address of the gfn */
		};
		/* KF_INVALIDATE_START: who invalidated (there is no fault, so these bytes are free).
		 * lib/sources.ts turns stack_id + comm (+ range_event) into a source. Unknown = the
		 * all-ones bytes begin() leaves (comm[0] == 0xff, stack_id == -1, range_event ==
		 * KF_UNKNOWN_U32), so records written before these fields existed read as unknown.
		 * Not separate fields of the capture field table: the same bytes as gpa..hva. */
		struct {
			char comm[16];      /* the invalidating task's comm (ksmd, kcompactd0, the VMM's thread) */
			__s32 stack_id;     /* its kernel stack in the tracer's stack map; another negative
			                     * value: -errno from bpf_get_stackid (-EEXIST: map full/collision) */
			__u32 range_event;  /* enum mmu_notifier_event of the range (probes on the notifier) */
		};
	};
	__u64 pfn;          /* resolved host pfn */
	__u64 rip;          /* guest RIP */
	__u64 mmu_seq;      /* the VM's mmu_invalidate_seq at the probe */
	__u64 fault_seq;    /* the fault's own snapshot (fault->mmu_seq) */
	__s64 in_progress;  /* the VM's mmu_invalidate_in_progress */
	__u64 range_start;  /* the VM's invalidation range (hva or gfn: KF_FLAG_RANGE_GFN) */
	__u64 range_end;
	__s32 ret;          /* RET_PF_* (FAULT_RET) or fault-in return (FAULTIN_RET) */
	__u32 repeat;       /* identical consecutive events this record stands for (>= 1) */
};

#define KVMFAULT_EVENT_SIZE 120

/* Frames kept per kernel stack of an invalidation (the stack map's value size). The source
 * functions (lib/sources.ts) lie within the first ~15 frames above the notifier; 32 leaves room
 * for the deepest reclaim / compaction paths seen (kswapd: 14 frames). */
#define KF_STACK_DEPTH 32

#if defined(__cplusplus)
static_assert(sizeof(struct kvmfault_event) == KVMFAULT_EVENT_SIZE, "record size");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct kvmfault_event) == KVMFAULT_EVENT_SIZE, "record size");
#endif

/*
 * KVM's own per-vCPU statistics (struct kvm_vcpu_stat, the numbers debugfs and KVM_GET_STATS_FD
 * show), as the counters iterator (kvmcounters.bpf.c) reads them for every vCPU on the host: one
 * struct kvmfault_vcpu_counters per vCPU file descriptor per sample. A statistic this kernel does
 * not have is KF_UNKNOWN_U64. Index values are stable (lib/counters.ts names them).
 */
enum kvmfault_vcpu_stat {
	KF_STAT_PF_TAKEN = 0,             /* page faults KVM handled (every retry counts) */
	KF_STAT_PF_FIXED = 1,             /* ... that installed a mapping */
	KF_STAT_PF_EMULATE = 2,           /* ... sent to the instruction emulator */
	KF_STAT_PF_SPURIOUS = 3,          /* ... found the mapping already there */
	KF_STAT_PF_FAST = 4,              /* ... fixed by the lockless fast path */
	KF_STAT_PF_MMIO_SPTE_CREATED = 5, /* ... made an MMIO spte */
	KF_STAT_PF_GUEST = 6,             /* ... reflected to the guest (shadow paging) */
	KF_STAT_EXITS = 7,
	KF_STAT_IO_EXITS = 8,
	KF_STAT_MMIO_EXITS = 9,
	KF_STAT_HALT_EXITS = 10,
	KF_STAT_INSN_EMULATION = 11,
	KF_STAT_COUNT = 12,
};

struct kvmfault_vcpu_counters {
	__u32 pid;          /* VMM process (tgid) holding the vCPU fd */
	__u32 fd;           /* the vCPU's file descriptor in that process */
	__u32 vcpu_id;      /* vcpu->vcpu_id */
	__u32 tid;          /* the vCPU's thread (vcpu->pid), 0 before its first KVM_RUN */
	__u64 vm_id;        /* the struct kvm pointer, hashed with the iterator's own key */
	__u64 mmu_seq;      /* the VM's mmu_invalidate_seq (mmu_notifier_seq before 6.3) */
	__s64 in_progress;  /* the VM's mmu_invalidate_in_progress */
	__u64 stat[KF_STAT_COUNT];
};

#define KVMFAULT_VCPU_COUNTERS_SIZE 136

#if defined(__cplusplus)
static_assert(sizeof(struct kvmfault_vcpu_counters) == KVMFAULT_VCPU_COUNTERS_SIZE, "counters size");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct kvmfault_vcpu_counters) == KVMFAULT_VCPU_COUNTERS_SIZE, "counters size");
#endif

/*
 * Guest memory of every VM on the host, as the memslot iterator (kvmcounters.bpf.c,
 * kvm_vm_memslots) reads it through each VM fd: per VM fd, one struct kvmfault_memslot per
 * memslot (a guest-physical range and the host virtual range behind it), then one summary record
 * (KF_MEMSLOT_SUMMARY). lib/sources.ts matches invalidations' hva ranges against the slots. The
 * walk is bounded: at most KF_MEMSLOTS_MAX slots per address space, and on v5.17+ kernels at most
 * KF_MEMSLOT_CHAIN slots per bucket of KVM's id hash; the summary says when a bound cut it short.
 */
#define KF_MEMSLOTS_MAX 64
#define KF_MEMSLOT_CHAIN 8
#define KF_MEMSLOT_SUMMARY   (1u << 0) /* the VM's summary record: no slot in it */
#define KF_MEMSLOT_TRUNCATED (1u << 1) /* summary: a bound of the walk left slots out */
#define KF_MEMSLOT_NO_SHAPE  (1u << 2) /* summary: this kernel's struct kvm_memslots is neither known shape */

struct kvmfault_memslot {
	__u32 pid;            /* process (tgid) holding the VM fd */
	__u32 fd;             /* the VM fd in that process */
	__u64 vm_id;          /* the struct kvm pointer, hashed with the iterator's key (the tracer's
	                       * when lib/tracer.ts opens it, so ids equal the records' vm_id) */
	__u64 userspace_addr; /* hva of the slot's first page */
	__u64 npages;         /* slot size in pages (4 KiB) */
	__u64 base_gfn;       /* guest frame number of the slot's first page */
	__u16 as_id;          /* address space (x86: 1 = SMM) */
	__s16 slot_id;        /* KVM's slot id (-1 unknown) */
	__u32 flags;          /* KF_MEMSLOT_* */
};

#define KVMFAULT_MEMSLOT_SIZE 48

#if defined(__cplusplus)
static_assert(sizeof(struct kvmfault_memslot) == KVMFAULT_MEMSLOT_SIZE, "memslot size");
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
_Static_assert(sizeof(struct kvmfault_memslot) == KVMFAULT_MEMSLOT_SIZE, "memslot size");
#endif

#endif /* KVMFAULT_EVENTS_H */
