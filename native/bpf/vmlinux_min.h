/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmlinux_min.h - the few kernel types kvmfault.bpf.c reads, instead of a 134k-line vmlinux.h.
 *
 * Every struct carries preserve_access_index, so each field access is a CO-RE relocation that
 * libbpf resolves against the running kernel's BTF (/sys/kernel/btf/vmlinux, or the kvm module's
 * split BTF): only the field NAMES here must exist in the kernel, not these offsets or orders.
 * Fields that were renamed or retyped between kernels have flavours in kvm_core.bpf.h.
 * Exceptions: struct pt_regs is the x86-64 register frame (the kprobe context, a fixed ABI) and
 * bpf_raw_tracepoint_args is UAPI.
 */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s64 s64;
typedef _Bool bool;
enum { false = 0, true = 1 };
typedef u64 gpa_t;
typedef u64 gfn_t;
typedef u64 kvm_pfn_t;

/* UAPI values (stable ABI) */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_STACK_TRACE = 7,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};
enum { BPF_ANY = 0, BPF_NOEXIST = 1 };
enum { BPF_F_NO_PREALLOC = 1 };
enum { BPF_LOCAL_STORAGE_GET_F_CREATE = 1 };
enum { BPF_RB_NO_WAKEUP = 1, BPF_RB_FORCE_WAKEUP = 2 };
enum { BPF_RB_AVAIL_DATA = 0 };

struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

/* x86-64 register frame: the kprobe context (bpf_tracing.h PT_REGS_PARMn / PT_REGS_RC). */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

struct hlist_node {
	struct hlist_node *next, **pprev;
};
struct hlist_head {
	struct hlist_node *first;
};

/* include/linux/preempt.h (CONFIG_PREEMPT_NOTIFIERS, selected by KVM) */
struct preempt_notifier {
	struct hlist_node link;
	void *ops;
};

struct task_struct {
	int pid;
	int tgid;
	struct hlist_head preempt_notifiers;
};

/* include/linux/kvm_host.h (v5.17+ shape; the array shape before it in kvm_core.bpf.h) */
struct kvm_memory_slot {
	struct hlist_node id_node[2];
	gfn_t base_gfn;
	unsigned long npages;
	unsigned long userspace_addr;
	short id;
	u16 as_id;
};

/* one address space's memslots: since a54d806688fe ("KVM: Keep memslots in tree-based
 * structures instead of array-based ones", v5.17) found by id in a 128-bucket hash, each slot
 * linked through id_node[node_idx] */
struct kvm_memslots {
	u64 generation;
	struct hlist_head id_hash[128];
	int node_idx;
};

/* include/linux/mmu_notifier.h: the notifier KVM registers per VM (embedded in struct kvm) and
 * the range its invalidate_range_start callback gets; event is the kernel's reason code */
struct mmu_notifier {
	struct hlist_node hlist;
};
enum mmu_notifier_event { MMU_NOTIFY_UNMAP = 0 };
struct mmu_notifier_range {
	unsigned long start;
	unsigned long end;
	enum mmu_notifier_event event;
};

struct kvm {
	struct mmu_notifier mmu_notifier;
	struct kvm_memslots *memslots[2];  /* per address space (x86: 1 is SMM) */
	unsigned long mmu_invalidate_seq;
	long mmu_invalidate_in_progress;
	gfn_t mmu_invalidate_range_start;
	gfn_t mmu_invalidate_range_end;
};

/* arch/x86/include/asm/kvm_host.h */
enum kvm_reg { VCPU_REGS_RIP = 16 };  /* UAPI-stable register index (kvm_regs order) */

struct kvm_vcpu_arch {
	unsigned long regs[17];
	u32 regs_avail;
};

/* the statistics the counters iterator reads (kvmcounters.bpf.c); same names since v5.13 */
struct kvm_vcpu_stat {
	u64 pf_taken;
	u64 pf_fixed;
	u64 pf_emulate;
	u64 pf_spurious;
	u64 pf_fast;
	u64 pf_mmio_spte_created;
	u64 pf_guest;
	u64 exits;
	u64 io_exits;
	u64 mmio_exits;
	u64 halt_exits;
	u64 insn_emulation;
};

struct upid {
	int nr;
};
struct pid {
	struct upid numbers[1];
};

struct kvm_vcpu {
	struct kvm *kvm;
	struct preempt_notifier preempt_notifier;
	int vcpu_id;
	struct pid *pid;
	struct kvm_vcpu_arch arch;
	struct kvm_vcpu_stat stat;
};

/* include/linux/fs.h, dcache.h: a vCPU fd is an anon-inode file named "kvm-vcpu:<id>", a VM fd
 * one named "kvm-vm" */
struct qstr {
	const unsigned char *name;
};
struct dentry {
	struct qstr d_name;
};
struct path {
	struct dentry *dentry;
};
struct file {
	struct path f_path;
	void *private_data;
};

/* kernel/bpf/task_iter.c: the context of an iter/task_file program */
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
};
struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
};

/* arch/x86/kvm/mmu/mmu_internal.h (6.18 shape; older shapes in kvm_core.bpf.h) */
struct kvm_page_fault {
	const gpa_t addr;
	const u64 error_code;
	const bool prefetch;
	const bool exec;
	const bool write;
	const bool present;
	const bool is_tdp;
	gfn_t gfn;
	struct kvm_memory_slot *slot;
	unsigned long mmu_seq;
	kvm_pfn_t pfn;
};

#pragma clang attribute pop

#endif /* __VMLINUX_H__ */
