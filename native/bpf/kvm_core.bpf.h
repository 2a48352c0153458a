/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kvm_core.bpf.h - every KVM layout difference kvmfault.bpf.c cares about, in one place
 * (the libbpf-tools core_fixes.bpf.h pattern). Each flavour struct (name___suffix: libbpf strips
 * the suffix when matching kernel types) and each accessor cites the kernel change it handles.
 * Accessors return the events.h "unknown" sentinels when a field does not exist on this kernel.
 * Table of what moved where: /work/shared/KERNELS.md.
 */
#ifndef KVMFAULT_KVM_CORE_BPF_H
#define KVMFAULT_KVM_CORE_BPF_H

#include <bpf/bpf_core_read.h>
#include "events.h"

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

/* Before 20ec3ebd707c ("KVM: Rename mmu_notifier_* to mmu_invalidate_*", v6.1) the VM's
 * invalidation state was mmu_notifier_seq / mmu_notifier_count, and the range (added in v5.13,
 * hva) mmu_notifier_range_start/end. */
struct kvm___old {
	unsigned long mmu_notifier_seq;
	long mmu_notifier_count;
	unsigned long mmu_notifier_range_start;
	unsigned long mmu_notifier_range_end;
};

/* fault->hva existed from v6.0 until "KVM: x86/mmu: Drop kvm_page_fault.hva, i.e. don't track
 * intermediate hva" (v6.13); since then the hva is computed from the memslot. */
struct kvm_page_fault___hva {
	unsigned long hva;
};

/* error_code was u32 until "KVM: x86: Widen kvm_page_fault.error_code to u64" (v6.10, needed
 * for the synthetic PFERR_PRIVATE_ACCESS bit); reading 8 bytes on an older kernel would take the
 * next fields' bytes as the high half. */
struct kvm_page_fault___err32 {
	u32 error_code;
};

/* fault->mmu_seq: the fault's own snapshot of the sequence, from ba6e3fe25543 ("KVM: x86/mmu:
 * Grab mmu_invalidate_seq in kvm_faultin_pfn()", v6.3). Before that it was a local variable. */
struct kvm_page_fault___noseq {
	gfn_t gfn;
};

#pragma clang attribute pop

/* The VM's sequence: mmu_invalidate_seq (v6.1+) or mmu_notifier_seq (older). */
static __always_inline __u64 kvm_invalidate_seq(struct kvm *kvm)
{
	if (bpf_core_field_exists(kvm->mmu_invalidate_seq))
		return BPF_CORE_READ(kvm, mmu_invalidate_seq);
	struct kvm___old *old = (void *)kvm;
	if (bpf_core_field_exists(old->mmu_notifier_seq))
		return BPF_CORE_READ(old, mmu_notifier_seq);
	return KF_UNKNOWN_U64;
}

/* Invalidations in progress: mmu_invalidate_in_progress (v6.1+) / mmu_notifier_count. */
static __always_inline __s64 kvm_invalidate_in_progress(struct kvm *kvm)
{
	if (bpf_core_field_exists(kvm->mmu_invalidate_in_progress))
		return BPF_CORE_READ(kvm, mmu_invalidate_in_progress);
	struct kvm___old *old = (void *)kvm;
	if (bpf_core_field_exists(old->mmu_notifier_count))
		return BPF_CORE_READ(old, mmu_notifier_count);
	return KF_UNKNOWN_S64;
}

/* The range being invalidated. Unit: hva until 8569992d64b8 ("KVM: Use gfn instead of hva for
 * mmu_notifier_retry", v6.8), gfn since; both types are 64-bit integers, so CO-RE cannot tell
 * them apart: the loader reads the member's BTF type name (gfn_t or not) and sets range_is_gfn. */
static __always_inline void kvm_invalidate_range(struct kvm *kvm, __u64 *start, __u64 *end)
{
	if (bpf_core_field_exists(kvm->mmu_invalidate_range_start)) {
		*start = BPF_CORE_READ(kvm, mmu_invalidate_range_start);
		*end = BPF_CORE_READ(kvm, mmu_invalidate_range_end);
		return;
	}
	struct kvm___old *old = (void *)kvm;
	if (bpf_core_field_exists(old->mmu_notifier_range_start)) {
		*start = BPF_CORE_READ(old, mmu_notifier_range_start);
		*end = BPF_CORE_READ(old, mmu_notifier_range_end);
		return;
	}
	*start = KF_UNKNOWN_U64;  /* v5.12 and older: no range, only the count */
	*end = KF_UNKNOWN_U64;
}

static __always_inline __u64 fault_error_code(struct kvm_page_fault *fault)
{
	if (bpf_core_field_size(fault->error_code) == 4)
		return BPF_CORE_READ((struct kvm_page_fault___err32 *)fault, error_code);
	return BPF_CORE_READ(fault, error_code);
}

static __always_inline __u64 fault_seq(struct kvm_page_fault *fault)
{
	if (bpf_core_field_exists(fault->mmu_seq))
		return BPF_CORE_READ(fault, mmu_seq);
	return KF_UNKNOWN_U64;
}

/* Host virtual address of the fault's gfn: fault->hva where it exists (v6.0-v6.12), else the
 * memslot's userspace_addr + page offset of the gfn inside the slot (what __gfn_to_hva_memslot
 * computes). Unknown without a slot (MMIO, or before the slot is looked up). */
static __always_inline __u64 fault_hva(struct kvm_page_fault *fault, __u64 gfn)
{
	struct kvm_page_fault___hva *fh = (void *)fault;
	if (bpf_core_field_exists(fh->hva)) {
		__u64 hva = BPF_CORE_READ(fh, hva);
		/* 0, or KVM_HVA_ERR_BAD (PAGE_OFFSET, a kernel address) on 6.12, until the fault-in
		 * step fills it: not a real hva */
		if (hva && !(hva >> 63))
			return hva;
	}
	struct kvm_memory_slot *slot = BPF_CORE_READ(fault, slot);
	if (!slot)
		return KF_UNKNOWN_U64;
	__u64 base = BPF_CORE_READ(slot, base_gfn);
	__u64 npages = BPF_CORE_READ(slot, npages);
	if (gfn < base || gfn - base >= npages)
		return KF_UNKNOWN_U64;
	return BPF_CORE_READ(slot, userspace_addr) + (gfn - base) * 4096;
}

#endif /* KVMFAULT_KVM_CORE_BPF_H */
