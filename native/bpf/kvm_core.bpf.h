/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kvm_core.bpf.h - every KVM layout difference kvmfault.bpf.c cares about, in one place
 * (the libbpf-tools core_fixes.bpf.h pattern). Each flavour struct (name___suffix: libbpf strips
 * the suffix when matching kernel types) and each accessor cites the kernel change it handles.
 * Accessors return the events.h "unknown" sentinels when a field does not exist on this kernel.
 * What each matrix kernel relocates and lacks: docs/kernels.md, "CO-RE relocations".
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

/* Before a54d806688fe (v5.17) an address space's memslots were an array sorted by gfn, used_slots
 * long, inside struct kvm_memslots itself (no id hash, no node_idx). */
struct kvm_memslots___array {
	int used_slots;
	struct kvm_memory_slot memslots[];
};

#pragma clang attribute pop

/* ---- several fields in one read -------------------------------------------------------------
 * Every BPF_CORE_READ is one bpf_probe_read_kernel call, ~25-30 ns each on the cache-cold path
 * after a guest exit (bench/probe-cost: 1044 ns per spte_requested hit with ~25 of them). Fields
 * that lie close together are copied with ONE call into a stack buffer and taken from it at
 * their CO-RE offsets. Offsets are relocated constants, so the verifier checks every access. */
#define KF_SPAN_MAX 128

/* Copies bytes [lo, hi) of *obj into buf. False (buf zeroed by the helper) if they are more than
 * KF_SPAN_MAX apart on this kernel or cannot be read. */
static __always_inline bool span_read(__u8 *buf, const void *obj, __u32 lo, __u32 hi)
{
	if (hi <= lo || hi - lo > KF_SPAN_MAX)
		return false;
	return bpf_probe_read_kernel(buf, hi - lo, (const char *)obj + lo) == 0;
}

/* The field at kernel offset off (a field of size 1, 4 or 8) from a span read at lo. */
static __always_inline __u64 span_field(const __u8 *buf, __u32 lo, __u32 off, __u32 size)
{
	__u32 at = off - lo;
	if (off < lo || at > KF_SPAN_MAX - 8)
		return KF_UNKNOWN_U64;
	if (size == 8)
		return *(const __u64 *)(buf + at);
	if (size == 4)
		return *(const __u32 *)(buf + at);
	return buf[at];
}
#define SPAN_FIELD(buf, lo, field) span_field(buf, lo, bpf_core_field_offset(field), bpf_core_field_size(field))
#define FIELD_END(field) (bpf_core_field_offset(field) + bpf_core_field_size(field))

/* The VM's invalidation state: sequence, in-progress count and range, in one read.
 * mmu_invalidate_* (v6.1+) or mmu_notifier_* (older; no range before v5.13). The four fields
 * are adjacent in struct kvm on every kernel since the range was added. */
static __always_inline void kvm_invalidate_state(struct kvm *kvm, __u64 *seq, __s64 *in_progress,
						 __u64 *start, __u64 *end)
{
	__u8 buf[KF_SPAN_MAX];
	struct kvm___old *old = (void *)kvm;
	*seq = KF_UNKNOWN_U64;
	*in_progress = KF_UNKNOWN_S64;
	*start = KF_UNKNOWN_U64;
	*end = KF_UNKNOWN_U64;
	if (bpf_core_field_exists(kvm->mmu_invalidate_seq)) {
		__u32 lo = bpf_core_field_offset(kvm->mmu_invalidate_seq);
		if (!span_read(buf, kvm, lo, FIELD_END(kvm->mmu_invalidate_range_end)))
			return;
		*seq = SPAN_FIELD(buf, lo, kvm->mmu_invalidate_seq);
		*in_progress = SPAN_FIELD(buf, lo, kvm->mmu_invalidate_in_progress);
		*start = SPAN_FIELD(buf, lo, kvm->mmu_invalidate_range_start);
		*end = SPAN_FIELD(buf, lo, kvm->mmu_invalidate_range_end);
	} else if (bpf_core_field_exists(old->mmu_notifier_seq)) {
		__u32 lo = bpf_core_field_offset(old->mmu_notifier_seq);
		bool range = bpf_core_field_exists(old->mmu_notifier_range_end);
		__u32 hi = range ? FIELD_END(old->mmu_notifier_range_end) : FIELD_END(old->mmu_notifier_count);
		if (!span_read(buf, kvm, lo, hi))
			return;
		*seq = SPAN_FIELD(buf, lo, old->mmu_notifier_seq);
		*in_progress = SPAN_FIELD(buf, lo, old->mmu_notifier_count);
		if (range) {
			*start = SPAN_FIELD(buf, lo, old->mmu_notifier_range_start);
			*end = SPAN_FIELD(buf, lo, old->mmu_notifier_range_end);
		}
	}
}

/* An 8-byte field of a typed (BTF) pointer by plain load. The offset goes through an ALU add
 * (32-bit immediate) because a load's own offset is 16-bit: struct kvm's invalidation fields
 * lie at 39552 on 6.1, where libbpf cannot patch them into the load ("value too big"). The
 * empty asm hides the offset's value from clang, which would fold it back into the load. */
static __always_inline __u64 typed_u64_at(const void *obj, __u64 off)
{
	asm volatile("" : "+r"(off));
	return *(const __u64 *)((const char *)obj + off);
}
#define TYPED_U64(obj, field) typed_u64_at(obj, bpf_core_field_offset(field))

/* kvm_invalidate_state() for a typed struct kvm pointer (a BTF pointer in a tp_btf / fentry
 * program): plain loads, which the verifier turns into fault-safe direct reads, no helper call.
 * The fields are unsigned long / long / gfn_t (8 bytes) on every kernel; any other size takes
 * the helper read. */
static __always_inline void kvm_invalidate_state_typed(struct kvm *kvm, __u64 *seq, __s64 *in_progress,
						       __u64 *start, __u64 *end)
{
	struct kvm___old *old = (void *)kvm;
	if (bpf_core_field_exists(kvm->mmu_invalidate_seq)) {
		if (bpf_core_field_size(kvm->mmu_invalidate_seq) != 8 ||
		    bpf_core_field_size(kvm->mmu_invalidate_in_progress) != 8 ||
		    bpf_core_field_size(kvm->mmu_invalidate_range_start) != 8 ||
		    bpf_core_field_size(kvm->mmu_invalidate_range_end) != 8)
			goto helper;
		*seq = TYPED_U64(kvm, kvm->mmu_invalidate_seq);
		*in_progress = TYPED_U64(kvm, kvm->mmu_invalidate_in_progress);
		*start = TYPED_U64(kvm, kvm->mmu_invalidate_range_start);
		*end = TYPED_U64(kvm, kvm->mmu_invalidate_range_end);
		return;
	}
helper:  /* older names (before v6.1): rare enough to take the helper read */
	kvm_invalidate_state(kvm, seq, in_progress, start, end);
}

/* Keyed mix of the struct kvm pointer (splitmix64 finaliser): stable per VM for one loaded
 * object, not invertible to the pointer without that object's random key. */
static __always_inline __u64 kf_vm_hash(__u64 kvm, __u64 key)
{
	__u64 x = kvm ^ key;
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* A struct kvm_page_fault copied whole (80 bytes on 6.18) with one read into buf; the fields are
 * then read from the copy through a struct kvm_page_fault pointer, so each access is still
 * relocated against the kernel's layout. NULL when the struct is larger than the buffer. */
static __always_inline struct kvm_page_fault *fault_copy(__u8 *buf, struct kvm_page_fault *fault)
{
	__u32 size = bpf_core_type_size(struct kvm_page_fault);
	if (!size || size > KF_SPAN_MAX)
		return NULL;
	if (bpf_probe_read_kernel(buf, size, fault))
		return NULL;
	return (struct kvm_page_fault *)buf;
}

/* f: a copy from fault_copy(), or the typed struct itself (tp_btf / fentry) */
static __always_inline __u64 fault_error_code(const struct kvm_page_fault *f)
{
	if (bpf_core_field_size(f->error_code) == 4)
		return ((const struct kvm_page_fault___err32 *)f)->error_code;
	return f->error_code;
}

static __always_inline __u64 fault_seq(const struct kvm_page_fault *f)
{
	if (bpf_core_field_exists(f->mmu_seq))
		return f->mmu_seq;
	return KF_UNKNOWN_U64;
}

/* Host virtual address of the fault's gfn: fault->hva where it exists (v6.0-v6.12), else the
 * memslot's userspace_addr + page offset of the gfn inside the slot (what __gfn_to_hva_memslot
 * computes; one read for the slot's three fields, or plain loads when f is typed, i.e. the
 * kernel's struct itself in a tp_btf / fentry program). Unknown without a slot (MMIO, or before
 * the slot is looked up). */
static __always_inline __u64 fault_hva(const struct kvm_page_fault *f, __u64 gfn, bool typed)
{
	const struct kvm_page_fault___hva *fh = (const void *)f;
	if (bpf_core_field_exists(fh->hva)) {
		__u64 hva = fh->hva;
		/* 0, or KVM_HVA_ERR_BAD (PAGE_OFFSET, a kernel address) on 6.12, until the fault-in
		 * step fills it: not a real hva */
		if (hva && !(hva >> 63))
			return hva;
	}
	struct kvm_memory_slot *slot = f->slot;
	if (!slot)
		return KF_UNKNOWN_U64;
	if (typed) {  /* f is the kernel's own struct: slot is a BTF pointer, read directly */
		__u64 base = slot->base_gfn;
		if (gfn < base || gfn - base >= slot->npages)
			return KF_UNKNOWN_U64;
		return slot->userspace_addr + (gfn - base) * 4096;
	}
	__u8 buf[KF_SPAN_MAX];
	__u32 lo = bpf_core_field_offset(slot->base_gfn);
	if (!span_read(buf, slot, lo, FIELD_END(slot->userspace_addr)))
		return KF_UNKNOWN_U64;
	__u64 base = SPAN_FIELD(buf, lo, slot->base_gfn);
	__u64 npages = SPAN_FIELD(buf, lo, slot->npages);
	if (gfn < base || gfn - base >= npages)
		return KF_UNKNOWN_U64;
	return SPAN_FIELD(buf, lo, slot->userspace_addr) + (gfn - base) * 4096;
}

#endif /* KVMFAULT_KVM_CORE_BPF_H */
