// SPDX-License-Identifier: GPL-2.0
/*
 * kvmcounters.bpf.c - KVM's own per-vCPU statistics for every VM on the host, at no per-fault
 * cost: a BPF task_file iterator, run only when user space samples (lib/counters.ts).
 *
 * Why not debugfs or KVM_GET_STATS_FD: debugfs files list but every read gives EPERM under
 * integrity lockdown (Secure Boot hosts), and KVM serves the stats fd ioctl only to the VM's
 * owner process. The iterator walks every process's file table in the kernel, picks the files
 * named "kvm-vcpu:<id>" (the anon inode KVM gives each vCPU fd), and reads vcpu->stat and the
 * VM's invalidation sequence through BTF (CO-RE against the kvm module's types). Between
 * samples nothing runs.
 *
 * One struct kvmfault_vcpu_counters (events.h) per vCPU fd per read of the iterator. A second
 * iterator (kvm_vm_memslots, below) reads every VM's memslots through its VM fd.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "events.h"
#include "kvm_core.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u64 vm_id_key = 0; /* random per loaded object: vm_id is not a kernel pointer */

/* "kvm-vcpu:" without its NUL */
#define VCPU_PREFIX_LEN 9

static __always_inline bool is_vcpu_file(struct file *file)
{
	char name[16];
	const unsigned char *p = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	if (!p || bpf_probe_read_kernel_str(name, sizeof(name), p) <= VCPU_PREFIX_LEN)
		return false;
	return name[0] == 'k' && name[1] == 'v' && name[2] == 'm' && name[3] == '-' && name[4] == 'v' &&
	       name[5] == 'c' && name[6] == 'p' && name[7] == 'u' && name[8] == ':';
}

/* one statistic, or KF_UNKNOWN_U64 on a kernel without it */
#define STAT(c, vcpu, idx, field)                                                                 \
	(c).stat[idx] = bpf_core_field_exists((vcpu)->stat.field) ? BPF_CORE_READ(vcpu, stat.field) \
								    : KF_UNKNOWN_U64

SEC("iter/task_file")
int kvm_vcpu_counters(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct kvmfault_vcpu_counters c = {};
	__u64 start, end;

	if (!task || !file || !is_vcpu_file(file))
		return 0;
	struct kvm_vcpu *vcpu = BPF_CORE_READ(file, private_data);
	if (!vcpu)
		return 0;
	c.pid = BPF_CORE_READ(task, tgid);
	c.fd = ctx->fd;
	c.vcpu_id = BPF_CORE_READ(vcpu, vcpu_id);
	struct pid *pid = BPF_CORE_READ(vcpu, pid);
	c.tid = pid ? BPF_CORE_READ(pid, numbers[0].nr) : 0;
	struct kvm *kvm = BPF_CORE_READ(vcpu, kvm);
	c.vm_id = kf_vm_hash((__u64)kvm, vm_id_key);
	kvm_invalidate_state(kvm, &c.mmu_seq, &c.in_progress, &start, &end);
	STAT(c, vcpu, KF_STAT_PF_TAKEN, pf_taken);
	STAT(c, vcpu, KF_STAT_PF_FIXED, pf_fixed);
	STAT(c, vcpu, KF_STAT_PF_EMULATE, pf_emulate);
	STAT(c, vcpu, KF_STAT_PF_SPURIOUS, pf_spurious);
	STAT(c, vcpu, KF_STAT_PF_FAST, pf_fast);
	STAT(c, vcpu, KF_STAT_PF_MMIO_SPTE_CREATED, pf_mmio_spte_created);
	STAT(c, vcpu, KF_STAT_PF_GUEST, pf_guest);
	STAT(c, vcpu, KF_STAT_EXITS, exits);
	STAT(c, vcpu, KF_STAT_IO_EXITS, io_exits);
	STAT(c, vcpu, KF_STAT_MMIO_EXITS, mmio_exits);
	STAT(c, vcpu, KF_STAT_HALT_EXITS, halt_exits);
	STAT(c, vcpu, KF_STAT_INSN_EMULATION, insn_emulation);
	bpf_seq_write(ctx->meta->seq, &c, sizeof(c));
	return 0;
}

/* ---- memslots: every VM's guest memory as host virtual ranges ------------------------------
 * A second iterator over the same file tables, for the files named "kvm-vm" (a VM fd; its
 * private_data is the struct kvm). Per VM fd: the memslots of each address space, then a summary
 * record (events.h, struct kvmfault_memslot). lib/sources.ts uses them to tell which VM an
 * invalidated hva range belongs to (the kvm_unmap_hva_range tracepoint has only the range).
 * Read without KVM's slots_lock / SRCU: a sample taken while the VMM changes its memslots may
 * see the set being rebuilt; the walk's bounds keep such a read finite, the next sample is clean. */

static __always_inline bool is_vm_file(struct file *file)
{
	char name[8];
	const unsigned char *p = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	if (!p || bpf_probe_read_kernel_str(name, sizeof(name), p) != 7)  /* "kvm-vm" + NUL */
		return false;
	return name[0] == 'k' && name[1] == 'v' && name[2] == 'm' && name[3] == '-' && name[4] == 'v' &&
	       name[5] == 'm';
}

/* One memslot record from the kernel's struct kvm_memory_slot at slot. */
static __always_inline void emit_slot(struct seq_file *seq, struct kvmfault_memslot *m,
				      struct kvm_memory_slot *slot, __u16 as)
{
	m->userspace_addr = BPF_CORE_READ(slot, userspace_addr);
	m->npages = BPF_CORE_READ(slot, npages);
	m->base_gfn = BPF_CORE_READ(slot, base_gfn);
	m->as_id = bpf_core_field_exists(slot->as_id) ? BPF_CORE_READ(slot, as_id) : as;
	m->slot_id = bpf_core_field_exists(slot->id) ? BPF_CORE_READ(slot, id) : -1;
	m->flags = 0;
	bpf_seq_write(seq, m, sizeof(*m));
}

/* Scratch for one address space's walk (too big for the 512-byte BPF stack): the slots found,
 * then emitted. Per CPU: two readers of the iterator at once do not share it. */
struct slot_walk {
	__u64 slots;     /* struct kvm_memslots * being walked */
	__u32 hash_off;  /* offsetof(struct kvm_memslots, id_hash) */
	__u32 node_off;  /* offsetof(struct kvm_memory_slot, id_node[node_idx]) */
	__u32 buckets;
	__u32 n;
	__u32 truncated;
	__u32 pad;
	__u64 found[KF_MEMSLOTS_MAX];
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct slot_walk);
} walk_scratch SEC(".maps");

/* bpf_loop callback: one bucket of KVM's memslot id hash (v5.17+, where bpf_loop exists too; a
 * plain loop over 128 buckets x chains takes the verifier past its 1M-instruction limit). */
static int walk_bucket(__u64 b, void *unused)
{
	__u32 zero = 0;
	struct slot_walk *w = bpf_map_lookup_elem(&walk_scratch, &zero);
	if (!w || b >= w->buckets)
		return 1;
	struct hlist_node *node = NULL;
	bpf_probe_read_kernel(&node, sizeof(node), (void *)(w->slots + w->hash_off + b * sizeof(struct hlist_head)));
	for (__u32 k = 0; k < KF_MEMSLOT_CHAIN && node; k++) {
		if (w->n >= KF_MEMSLOTS_MAX) {
			w->truncated = 1;
			return 1;
		}
		w->found[w->n & (KF_MEMSLOTS_MAX - 1)] = (__u64)node - w->node_off;
		w->n++;
		node = BPF_CORE_READ(node, next);
	}
	if (node)
		w->truncated = 1;
	return 0;
}

/* The slots of one address space (slots: its struct kvm_memslots); *truncated set when a bound
 * of the walk left some out. */
static __always_inline void emit_address_space(struct seq_file *seq, struct kvmfault_memslot *m,
					       struct kvm_memslots *slots, __u16 as, bool *truncated)
{
	__u32 zero = 0;
	struct slot_walk *w = bpf_map_lookup_elem(&walk_scratch, &zero);
	if (!w)
		return;
	w->n = 0;
	w->truncated = 0;
	if (bpf_core_field_exists(slots->node_idx)) {
		/* v5.17+: every slot of the active set is on one chain of id_hash, linked through
		 * its id_node[node_idx] */
		int idx = BPF_CORE_READ(slots, node_idx);
		w->slots = (__u64)slots;
		w->buckets = bpf_core_field_size(slots->id_hash) / sizeof(struct hlist_head);
		w->hash_off = bpf_core_field_offset(slots->id_hash);
		w->node_off = bpf_core_field_offset(struct kvm_memory_slot, id_node) +
			      (idx & 1) * bpf_core_type_size(struct hlist_node);
		bpf_loop(128, walk_bucket, NULL, 0);
	} else {
		/* before v5.17: an array of used_slots slots inside struct kvm_memslots */
		struct kvm_memslots___array *arr = (void *)slots;
		int used = BPF_CORE_READ(arr, used_slots);
		__u32 off = bpf_core_field_offset(arr->memslots);
		__u32 size = bpf_core_type_size(struct kvm_memory_slot);
		for (__u32 i = 0; i < KF_MEMSLOTS_MAX; i++) {
			if ((int)i >= used)
				break;
			w->found[i] = (__u64)slots + off + i * size;
			w->n++;
		}
		if (used > KF_MEMSLOTS_MAX)
			w->truncated = 1;
	}
	if (w->truncated)
		*truncated = true;
	for (__u32 i = 0; i < KF_MEMSLOTS_MAX; i++) {
		if (i >= w->n)
			break;
		emit_slot(seq, m, (struct kvm_memory_slot *)w->found[i], as);
	}
}

SEC("iter/task_file")
int kvm_vm_memslots(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct kvmfault_memslot m = {};
	bool truncated = false;

	if (!task || !file || !is_vm_file(file))
		return 0;
	struct kvm *kvm = BPF_CORE_READ(file, private_data);
	if (!kvm)
		return 0;
	m.pid = BPF_CORE_READ(task, tgid);
	m.fd = ctx->fd;
	m.vm_id = kf_vm_hash((__u64)kvm, vm_id_key);
	struct kvm_memslots___array *arr = NULL;
	bool known = bpf_core_field_exists(((struct kvm_memslots *)0)->node_idx) ||
		     bpf_core_field_exists(arr->used_slots);
	if (known) {
		/* KVM_ADDRESS_SPACE_NUM (x86: 2, the second for SMM): from the array's size here */
		__u32 spaces = bpf_core_field_size(kvm->memslots) / sizeof(void *);
		__u32 off = bpf_core_field_offset(kvm->memslots);
		for (__u32 as = 0; as < 2; as++) {
			if (as >= spaces)
				break;
			struct kvm_memslots *slots = NULL;
			bpf_probe_read_kernel(&slots, sizeof(slots), (char *)kvm + off + as * sizeof(void *));
			if (slots)
				emit_address_space(ctx->meta->seq, &m, slots, as, &truncated);
		}
	}
	m.userspace_addr = 0;
	m.npages = 0;
	m.base_gfn = 0;
	m.as_id = 0;
	m.slot_id = -1;
	m.flags = KF_MEMSLOT_SUMMARY | (truncated ? KF_MEMSLOT_TRUNCATED : 0) | (known ? 0 : KF_MEMSLOT_NO_SHAPE);
	bpf_seq_write(ctx->meta->seq, &m, sizeof(m));
	return 0;
}
