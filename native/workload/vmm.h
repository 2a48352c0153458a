/*
 * vmm.h - kvmfault's built-in KVM guest workload: a minimal VMM that makes real KVM page faults
 * on demand, with KVM's own binary statistics as ground truth.
 *
 * Plain C, no Node headers: the addon (native/addon/workload.cc) and bench tools link it alike.
 *
 * Model: `vms` VMs, each with one memslot (low memory for code/page tables + a touched region at
 * guest-physical KF_REGION_GPA) and `vcpus` vCPUs, one thread each. The region is cut into slots
 * of `stride` bytes; each vCPU owns an equal slice of slots and its guest writes one byte per
 * touch at a slot chosen by the pattern. All vCPUs of all VMs run each run in lockstep; between
 * runs (or concurrently, from a host thread per VM) the host can invalidate the region's backing
 * so KVM's mmu_notifier zaps the SPTEs and the guest refaults. Concurrently, the race is made
 * certain, not left to the scheduler: halfway through its first pass each vCPU waits until its
 * VM's invalidator has swept the whole region once more, so every run has invalidations while
 * its guest runs and the writes of the first half were invalidated before the pass ended.
 *
 * Lifecycle: kf_workload_create() (opens /dev/kvm, builds VMs, vCPUs and their threads) ->
 * kf_workload_run() (blocking; call it from a worker thread) -> kf_workload_destroy() (always;
 * closes every fd, joins every thread, unmaps everything, also after a failed create).
 */
#ifndef KVMFAULT_VMM_H
#define KVMFAULT_VMM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

enum kf_pattern { KF_PATTERN_SEQUENTIAL = 0, KF_PATTERN_RANDOM = 1, KF_PATTERN_HOT = 2 };
enum kf_invalidate { KF_INVAL_NONE = 0, KF_INVAL_BETWEEN = 1, KF_INVAL_CONCURRENT = 2 };
enum kf_inval_method { KF_INVAL_DONTNEED = 0, KF_INVAL_REMAP = 1, KF_INVAL_MPROTECT = 2 };
/* What backs /dev/kvm. PVM needs its own guest setup (see vmm.c); VMX/SVM run a plain guest. */
enum kf_host { KF_HOST_UNKNOWN = 0, KF_HOST_PVM = 1, KF_HOST_VMX = 2, KF_HOST_SVM = 3 };

/* Error classes, so callers can tell the user what to do (the message says it too). */
enum kf_err {
	KF_OK = 0,
	KF_ERR_NO_KVM,          /* /dev/kvm missing */
	KF_ERR_PERMISSION,      /* /dev/kvm not accessible */
	KF_ERR_UNSUPPORTED,     /* KVM too old / unknown host / missing capability */
	KF_ERR_ENTRY,           /* the guest could not enter (KVM_EXIT_FAIL_ENTRY, KVM_RUN error) */
	KF_ERR_GUEST,           /* the guest entered but misbehaved (exit reason, early stop, writes lost) */
	KF_ERR_SYSTEM,          /* a host resource failed (mmap, thread, fd limit) */
	KF_ERR_CANCELLED,       /* kf_workload_run() saw the cancel flag */
	KF_ERR_INVALID,         /* bad options (the JS layer validates first; this is the backstop) */
};

struct kf_workload_opts {
	int pattern;                 /* enum kf_pattern */
	uint64_t size_bytes;         /* touched region per VM; multiple of stride */
	uint64_t stride;             /* bytes between slots; multiple of 4096 */
	uint32_t runs;               /* 0 = until duration_s */
	double duration_s;           /* 0 = no limit; else stop runs (and chunks) at this deadline */
	uint64_t rate;               /* touches per second per vCPU, 0 = unlimited */
	uint32_t vcpus;              /* per VM, 1..KF_MAX_VCPUS */
	uint32_t vms;                /* 1..KF_MAX_VMS */
	uint64_t touches;            /* per vCPU per run; 0 = one per slot of its slice (hot: the same) */
	uint32_t hot_slots;          /* hot pattern: size of the hot set in slots (per vCPU) */
	uint64_t seed;               /* random/hot: LCG start */
	int invalidate;              /* enum kf_invalidate */
	int invalidate_method;       /* enum kf_inval_method */
	uint32_t invalidate_interval_us; /* concurrent: pause between two invalidations (a vCPU
					  * waits halfway for a sweep: region / 2 MiB of them) */
	int host;                    /* KF_HOST_UNKNOWN = detect; else force this guest setup */
	/* Burst before run 2 (index 1), after run 1 and before the 'between' invalidation: this many
	 * single-page madvise(MADV_DONTNEED) calls on the region's first page, one mmu_notifier
	 * invalidation (one mmu_invalidate_seq increment) each. Cancellable; 0 = none. */
	uint64_t burst;
	/* After that burst (or alone): this many single-page madvise(MADV_DONTNEED) calls on a page of
	 * the VMM's own memory that is no VM's guest memory (a private anonymous page mapped for it,
	 * in no memslot): mmu_notifier invalidations of the VMM's address space that touch no guest
	 * page (issue 17: they must not be counted as the VM's). 0 = none. */
	uint64_t heap_burst;
	/* madvise(MADV_MERGEABLE) on guest memory: KSM (when /sys/kernel/mm/ksm/run is 1) may
	 * merge the guest's identical pages, which invalidates them (issue 17's KSM source). */
	int mergeable;
	/* Optional: the burst's progress (calls done), stored atomically (__atomic, relaxed) every
	 * KF_BURST_STEP calls and at the end; owned by the caller, read from any thread. */
	uint64_t *burst_done;
};

#define KF_MAX_VCPUS 32
#define KF_MAX_VMS 16
#define KF_REGION_GPA (64ULL << 20)
#define KF_CODE_GPA 0x1000ULL
#define KF_GUEST_STORE_RIP (KF_CODE_GPA + 0x16) /* guest RIP of the touching store (guest.S) */

/* One completed run. Stat deltas are for KVM's cumulative statistics only, in the order of the
 * workload's name tables; instant/peak/histogram stats are left out. */
struct kf_run {
	uint32_t index;
	double start_s;              /* since kf_workload_run() began */
	double duration_s;           /* wall time of the guest passes (invalidation between runs excluded) */
	uint32_t passes;             /* 1, or 2 with concurrent invalidation (see vmm.c) */
	int truncated;               /* stopped early at the duration deadline */
	uint64_t touches;            /* guest writes, all vCPUs, all passes */
	uint64_t slots_touched;      /* distinct slots written, all vCPUs */
	uint64_t slots_verified;     /* of those, holding the run's byte value at the end (host read) */
	uint64_t slots_lost;         /* concurrent: written in pass 1 but wiped by an invalidation */
	uint64_t invalidations;      /* madvise/remap/mprotect calls on the region in this run */
	uint64_t efault_retries;     /* KVM_RUN -EFAULT while a remap/mprotect left a hole (retried) */
	uint64_t burst;              /* opts.burst calls made before this run (run 2 only), not in invalidations */
	uint64_t heap_burst;         /* opts.heap_burst calls made before this run (run 2 only), not in invalidations */
	double burst_s;              /* wall time of the burst, and of the heap burst (0: none) */
	double heap_burst_s;
	uint64_t *vm_delta;          /* [vms][n_vm_stats] */
	uint64_t *vcpu_delta;        /* [vms * vcpus][n_vcpu_stats], vCPU j of VM i at i * vcpus + j */
};

typedef void (*kf_run_cb)(void *ctx, const struct kf_run *run); /* run == NULL: vCPUs are up */

struct kf_workload;  /* opaque */

/* Detect what backs /dev/kvm; writes a one-line human description into detail. */
enum kf_host kf_detect_host(char *detail, size_t detail_len);
const char *kf_host_name(enum kf_host host);

/* Builds everything; on failure returns the error class, fills err and leaves *out set so that
 * kf_workload_destroy(*out) cleans up (it accepts NULL). */
int kf_workload_create(const struct kf_workload_opts *opts, struct kf_workload **out,
		       char *err, size_t err_len);
/* Runs all runs; calls cb (from this thread) once with NULL when the vCPU threads are up and
 * after each run. cancel is polled between chunks (at most ~KF_CHUNK_MAX touches apart). */
int kf_workload_run(struct kf_workload *w, kf_run_cb cb, void *ctx, const volatile int *cancel,
		    char *err, size_t err_len);
void kf_workload_destroy(struct kf_workload *w);

/* Introspection (valid between create and destroy). */
enum kf_host kf_workload_host(const struct kf_workload *w);
const char *kf_workload_host_detail(const struct kf_workload *w);
pid_t kf_workload_vcpu_tid(const struct kf_workload *w, uint32_t vm, uint32_t vcpu);
uint32_t kf_workload_n_runs(const struct kf_workload *w);
const struct kf_run *kf_workload_get_run(const struct kf_workload *w, uint32_t index);
uint32_t kf_workload_n_stats(const struct kf_workload *w, int vcpu_stats);
const char *kf_workload_stat_name(const struct kf_workload *w, int vcpu_stats, uint32_t i);
uint64_t kf_workload_slots_per_run(const struct kf_workload *w); /* distinct slots, all VMs */
uint64_t kf_workload_guest_memory(const struct kf_workload *w);  /* bytes mapped per VM */
uint64_t kf_workload_vm_region_hva(const struct kf_workload *w, uint32_t vm);

#ifdef __cplusplus
}
#endif
#endif
