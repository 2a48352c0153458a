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
 * One struct kvmfault_vcpu_counters (events.h) per vCPU fd per read of the iterator.
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
