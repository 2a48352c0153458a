/*
 * vmm.c - kvmfault's built-in KVM guest workload (see vmm.h for the model and the API).
 *
 * Two kinds of host, one guest program (guest.S, bytes in kf_guest_code below):
 *  - Ordinary KVM on VMX/SVM: a plain 64-bit guest entered directly in long mode with
 *    KVM_SET_SREGS; each first touch of a page is an EPT/NPT violation.
 *  - KVM PVM (kvm_pvm, shadow paging, no VMX/SVM; our machines): the guest only executes
 *    natively (and so takes real #PF exits into KVM's shadow MMU) when
 *      * it is in long mode set with KVM_SET_SREGS (CR0=PG|AM|WP|NE|ET|MP|PE, CR4=PAE,
 *        EFER=NXE|LMA|LME|SCE, CS.L=1, null LDT),
 *      * a PVCS page is registered with a host-side KVM_SET_MSRS of MSR 0x4b564d10 = gpa | 1,
 *      * every guest PTE has U/S=1 (PVM runs the guest at hardware CPL3; U/S=0 refaults forever),
 *      * it leaves with OUT to a port (HLT is not usable as an exit there).
 *    Real-mode or plain CPL0 guests "run" under PVM but every instruction is emulated: no faults.
 *  Both hosts get U/S=1 PTEs and the OUT exit (harmless on VMX/SVM); only the MSR differs.
 *
 * Guest-physical layout (one memslot at gpa 0; host mapping 2 MiB aligned, THP off so every
 * touch of a fresh 4 KiB page is exactly one fault):
 *   0x1000 code, 0x2000 PML4, 0x3000 PDPT, 0x4000..0x40000 PDs (2 MiB pages, <= 60 GiB),
 *   0x40000 + 0x1000 * vcpu: PVCS pages, KF_REGION_GPA (64 MiB).. the touched region.
 *
 * Fault accounting per fresh run: one KVM fault per distinct touched page, plus, in the very first
 * run, one for the code page and, with two-dimensional paging (NPT/EPT), one per guest page-table
 * page the CPU walks through NPT/EPT (PML4, PDPT, PD: 3 while the memory ends within 1 GiB). Under
 * shadow paging (PVM) KVM reads the guest's tables itself: only the code page.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "vmm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <linux/kvm.h>
#define KF_X86 1
#else
#define KF_X86 0
#endif

#define MIB (1ULL << 20)
#define PML4_GPA 0x2000ULL
#define PDPT_GPA 0x3000ULL
#define PD_GPA 0x4000ULL
#define PD_PAGES 60ULL
#define PVCS_GPA 0x40000ULL
#define STACK_TOP 0x7f000ULL
#define MSR_PVM_VCPU_STRUCT 0x4b564d10u
#define KF_EXIT_PORT 0x10
#define KF_CHUNK_MAX 16384          /* touches per KVM_RUN chunk when unthrottled: bounds cancel latency */
#define KF_INVAL_WINDOW (2 * MIB)   /* concurrent invalidation: bytes per call */
#define KF_MAX_EFAULT_RETRIES 10000000ULL

/* guest.S assembled; the store at offset 0x16 is KF_GUEST_STORE_RIP. */
static const uint8_t kf_guest_code[] = {
	0x49, 0x0f, 0xaf, 0xd0,       /* imul %r8,%rdx        */
	0x4c, 0x01, 0xca,             /* add  %r9,%rdx        */
	0x4c, 0x21, 0xd2,             /* and  %r10,%rdx       */
	0x4c, 0x39, 0xda,             /* cmp  %r11,%rdx       */
	0x73, 0xf1,                   /* jae  0               */
	0x48, 0x89, 0xd7,             /* mov  %rdx,%rdi       */
	0x48, 0x0f, 0xaf, 0xfe,       /* imul %rsi,%rdi       */
	0x88, 0x04, 0x3b,             /* mov  %al,(%rbx,%rdi) */
	0x48, 0xff, 0xc9,             /* dec  %rcx            */
	0x75, 0xe2,                   /* jne  0               */
	0xe6, 0x10,                   /* out  %al,$0x10       */
	0xeb, 0xfe,                   /* jmp  .               */
};

/* LCG constants (Knuth MMIX): a = 1 mod 4 and c odd give a full period modulo any 2^k. */
#define LCG_A 6364136223846793005ULL
#define LCG_C 1442695040888963407ULL

struct stat_table {             /* KVM binary stats layout, identical for every VM (or vCPU) fd */
	uint32_t n;                 /* selected (cumulative, scalar) stats */
	uint32_t name_size;
	char *names;                /* n * name_size */
	uint32_t *off;              /* byte offset of each selected stat inside the data block */
	uint64_t data_offset, data_size;
};

struct kf_vm;
struct kf_vcpu {
	struct kf_workload *w;
	struct kf_vm *vm;
	uint32_t index;
	int fd, stats_fd;
	struct kvm_run *run;
	pthread_t thread;
	int thread_started;
	pid_t tid;
	int ever_ran;
	/* this vCPU's walk (see guest.S) */
	uint64_t base_gpa, limit, mask, a, c, x0, pass_touches;
	uint64_t done;              /* touches completed in the current pass */
	int truncated;
	uint64_t efaults;
	int err;
	char errmsg[256];
	uint64_t *before;           /* stats snapshot at run start */
};

struct kf_vm {
	struct kf_workload *w;
	uint32_t index;
	int fd, stats_fd;
	uint8_t *raw;
	size_t raw_len;
	uint8_t *mem;
	uint64_t *before;
	struct kf_vcpu vcpus[KF_MAX_VCPUS];
	pthread_t inval_thread;
	int inval_started;
	uint64_t inval_pos, invalidations;
	int inval_err;
	char inval_msg[200];
};

struct kf_workload {
	struct kf_workload_opts o;
	enum kf_host host;
	char host_detail[320];
	int kvm_fd;
	int run_mmap_size;
	uint64_t region_size, mem_size, slots, slots_per_run;
	struct kf_vm *vms;
	uint32_t n_vms_built;
	struct stat_table st[2];    /* [0] VM, [1] vCPU */
	uint64_t *scratch;          /* one stats data block */
	/* run coordination: the coordinator bumps gen; each vCPU thread runs one pass per gen */
	pthread_mutex_t mu;
	pthread_cond_t cv_start, cv_done;
	int sync_init;
	uint64_t gen;
	uint32_t threads, ready, finished;
	int stop;
	volatile int abort_pass;    /* cancel: vCPU threads leave KVM_RUN and the pass */
	const volatile int *cancel;
	volatile int inval_active;
	uint8_t value;
	int settle_pass;            /* second pass of a concurrent run: ignores the deadline */
	double t0, deadline;
	struct kf_run **runs;
	uint32_t n_runs, cap_runs;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int fail(char *err, size_t len, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, len, fmt, ap);
	va_end(ap);
	return code;
}

static int close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
	return 0;
}

const char *kf_host_name(enum kf_host host)
{
	switch (host) {
	case KF_HOST_PVM: return "pvm";
	case KF_HOST_VMX: return "vmx";
	case KF_HOST_SVM: return "svm";
	default: return "unknown";
	}
}

static int read_param(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

static int cpu_flag(const char *flag)
{
	FILE *f = fopen("/proc/cpuinfo", "re");
	if (!f)
		return 0;
	char line[4096];
	int found = 0;
	size_t fl = strlen(flag);
	while (!found && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "flags", 5))
			continue;
		for (char *p = strstr(line, flag); p; p = strstr(p + 1, flag))
			if (p[-1] == ' ' && (p[fl] == ' ' || p[fl] == '\n'))
				found = 1;
		break;
	}
	fclose(f);
	return found;
}

enum kf_host kf_detect_host(char *detail, size_t len)
{
	char p[32];
	/* PVM first: on a VMX/SVM machine kvm_pvm can be loaded beside the vendor module. */
	if (access("/sys/module/kvm_pvm", F_OK) == 0) {
		snprintf(detail, len, "KVM PVM (kvm_pvm: shadow paging, guest at hardware CPL3; no VMX/SVM)");
		return KF_HOST_PVM;
	}
	if (access("/sys/module/kvm_intel", F_OK) == 0) {
		snprintf(detail, len, "Intel VMX (kvm_intel, EPT %s)",
			 read_param("/sys/module/kvm_intel/parameters/ept", p, sizeof(p)) ? "?" :
			 (p[0] == 'Y' || p[0] == '1') ? "on" : "off");
		return KF_HOST_VMX;
	}
	if (access("/sys/module/kvm_amd", F_OK) == 0) {
		snprintf(detail, len, "AMD SVM (kvm_amd, NPT %s)",
			 read_param("/sys/module/kvm_amd/parameters/npt", p, sizeof(p)) ? "?" :
			 (p[0] == 'Y' || p[0] == '1') ? "on" : "off");
		return KF_HOST_SVM;
	}
	if (cpu_flag("vmx")) {
		snprintf(detail, len, "Intel VMX (CPU flag; no kvm_intel module entry)");
		return KF_HOST_VMX;
	}
	if (cpu_flag("svm")) {
		snprintf(detail, len, "AMD SVM (CPU flag; no kvm_amd module entry)");
		return KF_HOST_SVM;
	}
	snprintf(detail, len, "unknown: no kvm_pvm, kvm_intel or kvm_amd module and no vmx/svm CPU flag");
	return KF_HOST_UNKNOWN;
}

/* ---- KVM binary statistics ------------------------------------------------------------- */

#if KF_X86
static int stat_table_init(struct stat_table *t, int fd, char *err, size_t len)
{
	struct kvm_stats_header h;
	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		return fail(err, len, KF_ERR_SYSTEM, "reading the KVM stats header: %s", strerror(errno));
	size_t dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	char *d = malloc(dsz * h.num_desc);
	t->names = malloc((size_t)h.name_size * h.num_desc + 1);
	t->off = calloc(h.num_desc + 1, sizeof(uint32_t));
	if (!d || !t->names || !t->off) {
		free(d);
		return fail(err, len, KF_ERR_SYSTEM, "out of memory for KVM stats descriptors");
	}
	if (pread(fd, d, dsz * h.num_desc, h.desc_offset) != (ssize_t)(dsz * h.num_desc)) {
		free(d);
		return fail(err, len, KF_ERR_SYSTEM, "reading KVM stats descriptors: %s", strerror(errno));
	}
	t->name_size = h.name_size;
	t->data_offset = h.data_offset;
	t->n = 0;
	t->data_size = 0;
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *e = (void *)(d + i * dsz);
		uint64_t end = e->offset + 8ULL * (e->size ? e->size : 1);
		if (end > t->data_size)
			t->data_size = end;
		/* Only cumulative scalar counters have meaningful per-run deltas. */
		if ((e->flags & KVM_STATS_TYPE_MASK) != KVM_STATS_TYPE_CUMULATIVE || e->size != 1)
			continue;
		memcpy(t->names + (size_t)t->n * h.name_size, e->name, h.name_size);
		t->names[(size_t)t->n * h.name_size + h.name_size - 1] = 0;
		t->off[t->n++] = e->offset;
	}
	free(d);
	return KF_OK;
}

/* Reads the selected stats of one fd into out[t->n]. */
static int stats_read(struct kf_workload *w, const struct stat_table *t, int fd, uint64_t *out)
{
	if (pread(fd, w->scratch, t->data_size, t->data_offset) != (ssize_t)t->data_size)
		return -1;
	for (uint32_t i = 0; i < t->n; i++)
		memcpy(&out[i], (uint8_t *)w->scratch + t->off[i], 8);
	return 0;
}
#endif

/* ---- building the VMs ---------------------------------------------------------------------- */

#if KF_X86
static void write_page_tables(uint8_t *mem, uint64_t mem_size)
{
	const uint64_t pte = 0x7;   /* P|RW|US: U/S for PVM (guest at CPL3); harmless elsewhere */
	uint64_t *pml4 = (void *)(mem + PML4_GPA), *pdpt = (void *)(mem + PDPT_GPA);
	pml4[0] = PDPT_GPA | pte;
	for (uint64_t g = 0; g < (mem_size + (1ULL << 30) - 1) >> 30; g++) {
		uint64_t *pd = (void *)(mem + PD_GPA + g * 4096);
		pdpt[g] = (PD_GPA + g * 4096) | pte;
		for (uint64_t i = 0; i < 512; i++) {
			uint64_t gpa = (g << 30) + (i << 21);
			if (gpa >= mem_size)
				break;
			pd[i] = gpa | 0x80 | pte;   /* 2 MiB page */
		}
	}
	memcpy(mem + KF_CODE_GPA, kf_guest_code, sizeof(kf_guest_code));
}

static int setup_vcpu(struct kf_workload *w, struct kf_vm *vm, struct kf_vcpu *v,
		      struct kvm_cpuid2 *cpuid, char *err, size_t len)
{
	v->fd = ioctl(vm->fd, KVM_CREATE_VCPU, v->index);
	if (v->fd < 0)
		return fail(err, len, errno == EMFILE ? KF_ERR_SYSTEM : KF_ERR_UNSUPPORTED,
			    "KVM_CREATE_VCPU %u of VM %u: %s", v->index, vm->index, strerror(errno));
	v->run = mmap(NULL, w->run_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return fail(err, len, KF_ERR_SYSTEM, "mmap of kvm_run: %s", strerror(errno));
	}
	/* The host's CPUID lets the guest's EFER.LME / MAXPHYADDR checks pass. */
	if (ioctl(v->fd, KVM_SET_CPUID2, cpuid) < 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_SET_CPUID2: %s", strerror(errno));

	struct kvm_sregs sr;
	if (ioctl(v->fd, KVM_GET_SREGS, &sr) < 0)
		return fail(err, len, KF_ERR_SYSTEM, "KVM_GET_SREGS: %s", strerror(errno));
	/* Flat segments; KVM_SET_SREGS loads the hidden parts directly, so no GDT is needed. */
	struct kvm_segment ds = { .base = 0, .limit = 0xffffffff, .selector = 0x18, .type = 3,
				  .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1 };
	struct kvm_segment cs = ds;
	cs.selector = 0x10;
	cs.type = 11;
	cs.l = 1;
	cs.db = 0;
	sr.cs = cs;
	sr.ds = sr.es = sr.ss = sr.fs = sr.gs = ds;
	memset(&sr.ldt, 0, sizeof(sr.ldt));     /* PVM supports no LDT */
	sr.tr.present = 1;
	sr.tr.type = 11;
	sr.cr3 = PML4_GPA;
	sr.cr4 = 1 << 5;                        /* PAE */
	sr.cr0 = 0x80050033;                    /* PG|AM|WP|NE|ET|MP|PE */
	sr.efer = 0xd01;                        /* NXE|LMA|LME|SCE */
	if (ioctl(v->fd, KVM_SET_SREGS, &sr) < 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_SET_SREGS (64-bit long mode): %s", strerror(errno));

	if (w->host == KF_HOST_PVM) {
		/* Register the PVCS: without it a CPL0 vCPU stays in PVM's emulated mode. */
		struct { struct kvm_msrs h; struct kvm_msr_entry e[1]; } m;
		memset(&m, 0, sizeof(m));
		m.h.nmsrs = 1;
		m.e[0].index = MSR_PVM_VCPU_STRUCT;
		m.e[0].data = (PVCS_GPA + 0x1000ULL * v->index) | 1;
		if (ioctl(v->fd, KVM_SET_MSRS, &m) != 1)
			return fail(err, len, KF_ERR_UNSUPPORTED,
				    "KVM PVM refused the PVCS MSR 0x%x (this PVM build differs from the one kvmfault knows; "
				    "try host 'vmx'/'svm' only if /dev/kvm is hardware KVM)", MSR_PVM_VCPU_STRUCT);
	}
	v->stats_fd = ioctl(v->fd, KVM_GET_STATS_FD, NULL);
	if (v->stats_fd < 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_GET_STATS_FD on a vCPU: %s", strerror(errno));
	return KF_OK;
}

static int setup_vm(struct kf_workload *w, struct kf_vm *vm, struct kvm_cpuid2 *cpuid, char *err, size_t len)
{
	vm->fd = ioctl(w->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->fd < 0)
		return fail(err, len, KF_ERR_SYSTEM, "KVM_CREATE_VM: %s%s", strerror(errno),
			    errno == EINTR ? "" : " (too many VMs or not enough memory?)");
	/* Guest RAM: private anonymous, 2 MiB aligned, THP off (one fault per 4 KiB page). */
	vm->raw_len = w->mem_size + 2 * MIB;
	vm->raw = mmap(NULL, vm->raw_len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->raw == MAP_FAILED) {
		vm->raw = NULL;
		return fail(err, len, KF_ERR_SYSTEM, "mmap of %llu MiB guest memory: %s",
			    (unsigned long long)(vm->raw_len >> 20), strerror(errno));
	}
	vm->mem = (uint8_t *)(((uintptr_t)vm->raw + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1));
	madvise(vm->mem, w->mem_size, MADV_NOHUGEPAGE);   /* best effort: fails only without THP */
	if (w->o.mergeable && madvise(vm->mem, w->mem_size, MADV_MERGEABLE))
		return fail(err, len, KF_ERR_SYSTEM, "madvise(MADV_MERGEABLE): %s (kernel without CONFIG_KSM?)", strerror(errno));
	write_page_tables(vm->mem, w->mem_size);

	struct kvm_userspace_memory_region slot = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = w->mem_size,
		.userspace_addr = (uintptr_t)vm->mem };
	if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		return fail(err, len, KF_ERR_SYSTEM, "KVM_SET_USER_MEMORY_REGION (%llu MiB): %s",
			    (unsigned long long)(w->mem_size >> 20), strerror(errno));
	vm->stats_fd = ioctl(vm->fd, KVM_GET_STATS_FD, NULL);
	if (vm->stats_fd < 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_GET_STATS_FD on a VM: %s", strerror(errno));

	for (uint32_t j = 0; j < w->o.vcpus; j++) {
		struct kf_vcpu *v = &vm->vcpus[j];
		int rc = setup_vcpu(w, vm, v, cpuid, err, len);
		if (rc)
			return rc;
		/* This vCPU's slice of slots and its walk over it (see guest.S). */
		uint64_t first = w->slots * j / w->o.vcpus, n = w->slots * (j + 1) / w->o.vcpus - first;
		v->base_gpa = KF_REGION_GPA + first * w->o.stride;
		v->limit = n;
		if (w->o.pattern == KF_PATTERN_HOT && w->o.hot_slots < n)
			v->limit = w->o.hot_slots;
		v->mask = 1;
		while (v->mask < v->limit)
			v->mask <<= 1;
		v->mask -= 1;
		if (w->o.pattern == KF_PATTERN_SEQUENTIAL) {
			v->a = 1;
			v->c = 1;
			v->x0 = v->mask;                /* first draw: (mask + 1) & mask = 0 */
		} else {
			v->a = LCG_A;
			v->c = LCG_C;
			v->x0 = (w->o.seed ^ ((vm->index * 1000003ULL + j) * 0x9E3779B97F4A7C15ULL)) & v->mask;
		}
		v->pass_touches = w->o.touches ? w->o.touches : n;
	}
	return KF_OK;
}
#endif

/* ---- the vCPU threads -------------------------------------------------------------------- */

static void kick_handler(int sig) { (void)sig; }   /* only interrupts KVM_RUN (EINTR) */
static int kick_signal(void) { return SIGRTMIN + 5; }
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static int kick_installed;
static void install_kick(void)
{
	struct sigaction old, sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;   /* no SA_RESTART: KVM_RUN must return */
	sigemptyset(&sa.sa_mask);
	if (sigaction(kick_signal(), NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
	    !(old.sa_flags & SA_SIGINFO) && sigaction(kick_signal(), &sa, NULL) == 0)
		kick_installed = 1;
}

#if KF_X86
static const char *exit_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "KVM_EXIT_UNKNOWN";
	case KVM_EXIT_EXCEPTION: return "KVM_EXIT_EXCEPTION";
	case KVM_EXIT_IO: return "KVM_EXIT_IO";
	case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
	case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO";
	case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN (triple fault)";
	case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
	default: return "exit";
	}
}

static int vcpu_error(struct kf_vcpu *v, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->errmsg, sizeof(v->errmsg), fmt, ap);
	va_end(ap);
	v->err = code;
	return code;
}

/* KVM_RUN until the guest's OUT to KF_EXIT_PORT, then complete that OUT (KVM API rule: re-enter
 * before touching registers) with immediate_exit. */
static int run_until_exit(struct kf_vcpu *v)
{
	struct kf_workload *w = v->w;
	for (;;) {
		if (w->abort_pass)
			return KF_ERR_CANCELLED;
		if (ioctl(v->fd, KVM_RUN, NULL) < 0) {
			int e = errno;
			if (e == EINTR || e == EAGAIN)
				continue;
			/* A concurrent mprotect(PROT_READ) leaves the hva read-only for a moment: KVM
			 * cannot map the write and returns -EFAULT. The next KVM_RUN retries the store. */
			if (e == EFAULT && w->inval_active && w->o.invalidate_method != KF_INVAL_DONTNEED &&
			    ++v->efaults < KF_MAX_EFAULT_RETRIES) {
				sched_yield();
				continue;
			}
			return vcpu_error(v, v->ever_ran ? KF_ERR_GUEST : KF_ERR_ENTRY,
					  "%s: KVM_RUN on vCPU %u of VM %u failed: %s",
					  v->ever_ran ? "guest failed" : "guest failed to enter",
					  v->index, v->vm->index, strerror(e));
		}
		struct kvm_run *r = v->run;
		if (r->exit_reason == KVM_EXIT_IO && r->io.direction == KVM_EXIT_IO_OUT &&
		    r->io.port == KF_EXIT_PORT) {
			v->ever_ran = 1;
			r->immediate_exit = 1;
			ioctl(v->fd, KVM_RUN, NULL);    /* completes the OUT; returns EINTR */
			r->immediate_exit = 0;
			return KF_OK;
		}
		struct kvm_regs regs;
		memset(&regs, 0, sizeof(regs));
		ioctl(v->fd, KVM_GET_REGS, &regs);
		int code = v->ever_ran ? KF_ERR_GUEST : KF_ERR_ENTRY;
		const char *what = v->ever_ran ? "guest failed" : "guest failed to enter";
		switch (r->exit_reason) {
		case KVM_EXIT_FAIL_ENTRY:
			return vcpu_error(v, KF_ERR_ENTRY, "guest failed to enter: KVM_EXIT_FAIL_ENTRY "
					  "hardware_entry_failure_reason=0x%llx on cpu %u (vCPU %u of VM %u)",
					  (unsigned long long)r->fail_entry.hardware_entry_failure_reason,
					  r->fail_entry.cpu, v->index, v->vm->index);
		case KVM_EXIT_INTERNAL_ERROR:
			return vcpu_error(v, code, "%s: KVM_EXIT_INTERNAL_ERROR suberror %u (data 0x%llx 0x%llx) "
					  "at rip 0x%llx (vCPU %u of VM %u)", what, r->internal.suberror,
					  (unsigned long long)(r->internal.ndata > 0 ? r->internal.data[0] : 0),
					  (unsigned long long)(r->internal.ndata > 1 ? r->internal.data[1] : 0),
					  (unsigned long long)regs.rip, v->index, v->vm->index);
		case KVM_EXIT_IO:
			return vcpu_error(v, code, "%s: unexpected KVM_EXIT_IO port 0x%x %s at rip 0x%llx "
					  "(vCPU %u of VM %u)", what, r->io.port,
					  r->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
					  (unsigned long long)regs.rip, v->index, v->vm->index);
		default:
			return vcpu_error(v, code, "%s: unexpected %s (exit reason %u) at rip 0x%llx "
					  "(vCPU %u of VM %u)", what, exit_name(r->exit_reason), r->exit_reason,
					  (unsigned long long)regs.rip, v->index, v->vm->index);
		}
	}
}

static void sleep_until(struct kf_workload *w, double t)
{
	for (;;) {
		double left = t - now_s();
		if (left <= 0 || w->abort_pass || (w->cancel && *w->cancel))
			return;
		if (left > 0.01)
			left = 0.01;
		struct timespec ts = { 0, (long)(left * 1e9) };
		nanosleep(&ts, NULL);
	}
}

static uint64_t inval_count(const struct kf_vm *vm)
{
	return __atomic_load_n(&vm->invalidations, __ATOMIC_ACQUIRE);
}

/* Invalidation windows per sweep of the region (inval_main's windows tile it). */
static uint64_t inval_windows(const struct kf_workload *w)
{
	uint64_t window = w->region_size < KF_INVAL_WINDOW ? w->region_size : KF_INVAL_WINDOW;
	return (w->region_size + window - 1) / window;
}

/* Concurrent invalidation, first pass: the race is not left to the scheduler. Halfway through
 * its pass (or after its only touch) a vCPU waits until its VM's invalidator has swept the whole
 * region after this point: one window per step, plus one for a step already under way. So every
 * run has invalidations while its guest runs, the guest's second half faults on memory being
 * invalidated, and the writes of its first half have been invalidated (wiped by dontneed/remap)
 * before the pass ends. Returns 0 to go on, nonzero if the pass must stop (cancel, abort, the
 * invalidator failed, the deadline). */
static int wait_for_sweep(struct kf_vcpu *v)
{
	struct kf_workload *w = v->w;
	struct kf_vm *vm = v->vm;
	uint64_t target = inval_count(vm) + inval_windows(w) + 1;
	while (inval_count(vm) < target) {
		if (w->abort_pass || (w->cancel && *w->cancel)) {
			v->err = KF_ERR_CANCELLED;
			return 1;
		}
		/* the invalidator stopped on an error: first_vcpu_error reports it */
		if (__atomic_load_n(&vm->inval_err, __ATOMIC_ACQUIRE) || !w->inval_active)
			return 1;
		if (w->deadline > 0 && now_s() >= w->deadline) {
			v->truncated = 1;
			return 1;
		}
		struct timespec ts = { 0, 20 * 1000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

/* One pass of this vCPU's walk: pass_touches touches, in chunks. */
static void vcpu_pass(struct kf_vcpu *v)
{
	struct kf_workload *w = v->w;
	uint64_t chunk_max = KF_CHUNK_MAX;
	if (w->o.rate) {                       /* ~100 chunks per second, sleeping to the schedule */
		chunk_max = w->o.rate / 100;
		if (chunk_max < 1)
			chunk_max = 1;
		if (chunk_max > KF_CHUNK_MAX)
			chunk_max = KF_CHUNK_MAX;
	}
	uint64_t x = v->x0;
	double t0 = now_s();
	v->done = 0;
	v->truncated = 0;
	/* see wait_for_sweep: halfway, or after the only touch */
	int gate = w->o.invalidate == KF_INVAL_CONCURRENT && !w->settle_pass && v->pass_touches > 0;
	uint64_t gate_at = (v->pass_touches + 1) / 2;
	while (v->done < v->pass_touches) {
		if (w->abort_pass || (w->cancel && *w->cancel)) {
			v->err = KF_ERR_CANCELLED;
			return;
		}
		if (!w->settle_pass && w->deadline > 0 && now_s() >= w->deadline) {
			v->truncated = 1;
			return;
		}
		if (gate && v->done == gate_at) {
			gate = 0;
			if (wait_for_sweep(v))
				return;
		}
		uint64_t n = v->pass_touches - v->done;
		if (n > chunk_max)
			n = chunk_max;
		if (gate && n > gate_at - v->done)
			n = gate_at - v->done;
		struct kvm_regs regs;
		memset(&regs, 0, sizeof(regs));
		regs.rip = KF_CODE_GPA;
		regs.rflags = 2;
		regs.rsp = STACK_TOP;
		regs.rax = w->value;
		regs.rbx = v->base_gpa;
		regs.rsi = w->o.stride;
		regs.rcx = n;
		regs.rdx = x;
		regs.r8 = v->a;
		regs.r9 = v->c;
		regs.r10 = v->mask;
		regs.r11 = v->limit;
		if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0) {
			vcpu_error(v, KF_ERR_SYSTEM, "KVM_SET_REGS: %s", strerror(errno));
			return;
		}
		int rc = run_until_exit(v);
		if (rc == KF_ERR_CANCELLED) {
			v->err = rc;
			return;
		}
		if (rc)
			return;
		if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0) {
			vcpu_error(v, KF_ERR_SYSTEM, "KVM_GET_REGS: %s", strerror(errno));
			return;
		}
		if (regs.rcx != 0) {
			vcpu_error(v, KF_ERR_GUEST, "guest stopped early: %llu of %llu touches left at rip 0x%llx "
				   "(vCPU %u of VM %u)", (unsigned long long)regs.rcx, (unsigned long long)n,
				   (unsigned long long)regs.rip, v->index, v->vm->index);
			return;
		}
		x = regs.rdx;
		v->done += n;
		if (w->o.rate)
			sleep_until(w, t0 + (double)v->done / (double)w->o.rate);
	}
	if (gate && v->done == gate_at)
		wait_for_sweep(v);
}
#endif

static void *vcpu_main(void *arg)
{
	struct kf_vcpu *v = arg;
	struct kf_workload *w = v->w;
	/* Only the kick signal may interrupt this thread (it breaks KVM_RUN on cancel). */
	sigset_t only_kick;
	sigfillset(&only_kick);
	if (kick_installed)
		sigdelset(&only_kick, kick_signal());
	pthread_sigmask(SIG_SETMASK, &only_kick, NULL);

	pthread_mutex_lock(&w->mu);
	v->tid = (pid_t)syscall(SYS_gettid);
	w->ready++;
	pthread_cond_broadcast(&w->cv_done);
	uint64_t seen = w->gen;
	for (;;) {
		while (!w->stop && w->gen == seen)
			pthread_cond_wait(&w->cv_start, &w->mu);
		if (w->stop)
			break;
		seen = w->gen;
		pthread_mutex_unlock(&w->mu);
#if KF_X86
		if (!v->err)
			vcpu_pass(v);
#endif
		pthread_mutex_lock(&w->mu);
		w->finished++;
		pthread_cond_broadcast(&w->cv_done);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

/* ---- invalidations ---------------------------------------------------------------------- */

/* Makes KVM's mmu_notifier zap the SPTEs of [off, off + len) of the region. */
static int invalidate_range(struct kf_workload *w, struct kf_vm *vm, uint64_t off, uint64_t len,
			    char *err, size_t err_len)
{
	uint8_t *p = vm->mem + KF_REGION_GPA + off;
	switch (w->o.invalidate_method) {
	case KF_INVAL_DONTNEED:   /* frees the pages: the next touch allocates again */
		if (madvise(p, len, MADV_DONTNEED))
			return fail(err, err_len, KF_ERR_SYSTEM, "madvise(MADV_DONTNEED): %s", strerror(errno));
		break;
	case KF_INVAL_REMAP:
		/* mmap(MAP_FIXED) over the range replaces it atomically: the same invalidation as
		 * munmap + remap, without a hole another thread's mmap could take meanwhile. */
		if (mmap(p, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
			 -1, 0) != p)
			return fail(err, err_len, KF_ERR_SYSTEM, "mmap(MAP_FIXED) remap: %s", strerror(errno));
		madvise(p, len, MADV_NOHUGEPAGE);
		break;
	case KF_INVAL_MPROTECT:   /* pages stay; only the SPTEs go (KVM then prefetches neighbours) */
		if (mprotect(p, len, PROT_READ) || mprotect(p, len, PROT_READ | PROT_WRITE))
			return fail(err, err_len, KF_ERR_SYSTEM, "mprotect: %s", strerror(errno));
		break;
	}
	__atomic_add_fetch(&vm->invalidations, 1, __ATOMIC_RELEASE);
	return KF_OK;
}


/* The burst before run 2 (opts.burst): one-page MADV_DONTNEED calls on the region's first page
 * of every VM, each one mmu_notifier invalidation. Polls the cancel flag and publishes progress
 * every KF_BURST_STEP calls. Kept apart from the invalidate modes above. */
#define KF_BURST_STEP 4096
static int burst(struct kf_workload *w, char *err, size_t err_len)
{
	uint64_t done = 0;
	while (done < w->o.burst) {
		if (w->cancel && *w->cancel)
			return fail(err, err_len, KF_ERR_CANCELLED, "workload cancelled");
		uint64_t n = w->o.burst - done < KF_BURST_STEP ? w->o.burst - done : KF_BURST_STEP;
		for (uint32_t i = 0; i < w->o.vms; i++) {
			uint8_t *p = w->vms[i].mem + KF_REGION_GPA;
			for (uint64_t k = 0; k < n; k++)
				if (madvise(p, 4096, MADV_DONTNEED))
					return fail(err, err_len, KF_ERR_SYSTEM, "burst madvise(MADV_DONTNEED): %s",
						    strerror(errno));
		}
		done += n;
		if (w->o.burst_done)
			__atomic_store_n(w->o.burst_done, done, __ATOMIC_RELAXED);
	}
	return KF_OK;
}

/* The heap burst before run 2 (opts.heap_burst): one-page MADV_DONTNEED calls on a page of the
 * VMM's own memory outside every memslot. KVM's notifier fires for each (it is registered on the
 * whole address space), but no guest page is touched and the sequence does not move. */
static int heap_burst(struct kf_workload *w, char *err, size_t err_len)
{
	uint8_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return fail(err, err_len, KF_ERR_SYSTEM, "heap burst mmap: %s", strerror(errno));
	int rc = KF_OK;
	for (uint64_t done = 0; done < w->o.heap_burst && !rc; done++) {
		if ((done & (KF_BURST_STEP - 1)) == 0 && w->cancel && *w->cancel)
			rc = fail(err, err_len, KF_ERR_CANCELLED, "workload cancelled");
		else if (madvise(p, 4096, MADV_DONTNEED))
			rc = fail(err, err_len, KF_ERR_SYSTEM, "heap burst madvise(MADV_DONTNEED): %s", strerror(errno));
	}
	munmap(p, 4096);  /* one more invalidation outside guest memory: not counted in heap_burst */
	return rc;
}

/* Concurrent mode: one thread per VM sweeps the region in KF_INVAL_WINDOW steps while the
 * vCPUs touch it, so faults race mmu_notifier invalidations (KVM retries the stale ones). */
static void *inval_main(void *arg)
{
	struct kf_vm *vm = arg;
	struct kf_workload *w = vm->w;
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, NULL);
	uint64_t window = w->region_size < KF_INVAL_WINDOW ? w->region_size : KF_INVAL_WINDOW;
	while (w->inval_active && !w->abort_pass) {
		/* windows tile the region; the last one may be shorter (it was skipped before) */
		if (vm->inval_pos >= w->region_size)
			vm->inval_pos = 0;
		uint64_t len = w->region_size - vm->inval_pos < window ? w->region_size - vm->inval_pos : window;
		int rc = invalidate_range(w, vm, vm->inval_pos, len, vm->inval_msg, sizeof(vm->inval_msg));
		if (rc) {
			__atomic_store_n(&vm->inval_err, rc, __ATOMIC_RELEASE);
			break;
		}
		vm->inval_pos += len;
		if (w->o.invalidate_interval_us) {
			struct timespec ts = { w->o.invalidate_interval_us / 1000000,
					       (long)(w->o.invalidate_interval_us % 1000000) * 1000 };
			nanosleep(&ts, NULL);
		} else {
			sched_yield();
		}
	}
	return NULL;
}

/* ---- create / run / destroy ---------------------------------------------------------------- */

int kf_workload_create(const struct kf_workload_opts *o, struct kf_workload **out, char *err, size_t len)
{
	*out = NULL;
	if (len)
		err[0] = 0;
#if !KF_X86
	(void)o;
	return fail(err, len, KF_ERR_UNSUPPORTED, "the built-in workload needs an x86-64 KVM host");
#else
	if (!o->stride || o->stride % 4096)
		return fail(err, len, KF_ERR_INVALID, "stride must be a positive multiple of 4096");
	if (!o->size_bytes || o->size_bytes % o->stride)
		return fail(err, len, KF_ERR_INVALID, "size must be a positive multiple of the stride");
	if (KF_REGION_GPA + o->size_bytes > PD_PAGES << 30)
		return fail(err, len, KF_ERR_INVALID, "size must leave the guest below 60 GiB");
	if (o->vcpus < 1 || o->vcpus > KF_MAX_VCPUS || o->vms < 1 || o->vms > KF_MAX_VMS)
		return fail(err, len, KF_ERR_INVALID, "vcpus must be 1..%d and vms 1..%d", KF_MAX_VCPUS, KF_MAX_VMS);
	if (o->size_bytes / o->stride < o->vcpus)
		return fail(err, len, KF_ERR_INVALID, "the region has fewer slots than vCPUs");
	if (!o->runs && o->duration_s <= 0)
		return fail(err, len, KF_ERR_INVALID, "runs = 0 needs a duration");
	if (o->pattern == KF_PATTERN_HOT && !o->hot_slots)
		return fail(err, len, KF_ERR_INVALID, "the hot pattern needs hot_slots >= 1");

	struct kf_workload *w = calloc(1, sizeof(*w));
	if (!w)
		return fail(err, len, KF_ERR_SYSTEM, "out of memory");
	w->o = *o;
	w->kvm_fd = -1;
	w->vms = calloc(o->vms, sizeof(*w->vms));
	if (!w->vms) {
		free(w);
		return fail(err, len, KF_ERR_SYSTEM, "out of memory");
	}
	for (uint32_t i = 0; i < o->vms; i++) {
		w->vms[i].w = w;
		w->vms[i].index = i;
		w->vms[i].fd = w->vms[i].stats_fd = -1;
		for (uint32_t j = 0; j < KF_MAX_VCPUS; j++) {
			w->vms[i].vcpus[j].w = w;
			w->vms[i].vcpus[j].vm = &w->vms[i];
			w->vms[i].vcpus[j].index = j;
			w->vms[i].vcpus[j].fd = w->vms[i].vcpus[j].stats_fd = -1;
		}
	}
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv_start, NULL);
	pthread_cond_init(&w->cv_done, NULL);
	w->sync_init = 1;
	*out = w;   /* from here on the caller's kf_workload_destroy() cleans up every path */
	pthread_once(&kick_once, install_kick);

	char detail[200];
	enum kf_host detected = kf_detect_host(detail, sizeof(detail));
	if (o->host != KF_HOST_UNKNOWN) {
		w->host = (enum kf_host)o->host;
		snprintf(w->host_detail, sizeof(w->host_detail), "%s guest setup forced (detected: %s)",
			 kf_host_name(w->host), detail);
	} else {
		w->host = detected;
		snprintf(w->host_detail, sizeof(w->host_detail), "%s", detail);
	}

	w->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (w->kvm_fd < 0) {
		int e = errno;
		if (e == ENOENT || e == ENXIO || e == ENODEV)
			return fail(err, len, KF_ERR_NO_KVM, "no /dev/kvm: KVM is not available on this host "
				    "(load kvm_intel or kvm_amd, enable virtualization in the firmware, "
				    "or run on a VM with nested virtualization)");
		if (e == EACCES || e == EPERM)
			return fail(err, len, KF_ERR_PERMISSION, "permission denied opening /dev/kvm: "
				    "run as root or add this user to the group that owns /dev/kvm (usually 'kvm')");
		return fail(err, len, KF_ERR_SYSTEM, "opening /dev/kvm: %s", strerror(e));
	}
	if (w->host == KF_HOST_UNKNOWN)
		return fail(err, len, KF_ERR_UNSUPPORTED, "unsupported host: cannot tell what backs /dev/kvm (%s); "
			    "force the guest setup with host 'vmx', 'svm' or 'pvm'", detail);
	int api = ioctl(w->kvm_fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		return fail(err, len, KF_ERR_UNSUPPORTED, "unsupported host: KVM API version %d (expected %d)",
			    api, KVM_API_VERSION);
	if (ioctl(w->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) <= 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "unsupported host: KVM has no binary statistics "
			    "(KVM_CAP_BINARY_STATS_FD, Linux >= 5.14 needed for the fault counters)");
	if (ioctl(w->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "unsupported host: no KVM_CAP_IMMEDIATE_EXIT (Linux >= 4.11)");
	w->run_mmap_size = ioctl(w->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (w->run_mmap_size <= 0)
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));

	struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } *cpuid = calloc(1, sizeof(*cpuid));
	if (!cpuid)
		return fail(err, len, KF_ERR_SYSTEM, "out of memory");
	cpuid->h.nent = 256;
	if (ioctl(w->kvm_fd, KVM_GET_SUPPORTED_CPUID, &cpuid->h) < 0) {
		free(cpuid);
		return fail(err, len, KF_ERR_UNSUPPORTED, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
	}

	w->region_size = o->size_bytes;
	w->slots = o->size_bytes / o->stride;
	w->mem_size = KF_REGION_GPA + o->size_bytes;
	int rc = KF_OK;
	for (uint32_t i = 0; i < o->vms && !rc; i++) {
		rc = setup_vm(w, &w->vms[i], &cpuid->h, err, len);
		w->n_vms_built = i + 1;
	}
	free(cpuid);
	if (rc)
		return rc;

	for (int k = 0; k < 2; k++) {
		int fd = k ? w->vms[0].vcpus[0].stats_fd : w->vms[0].stats_fd;
		if ((rc = stat_table_init(&w->st[k], fd, err, len)))
			return rc;
	}
	uint64_t scratch = w->st[0].data_size > w->st[1].data_size ? w->st[0].data_size : w->st[1].data_size;
	w->scratch = malloc(scratch + 8);
	if (!w->scratch)
		return fail(err, len, KF_ERR_SYSTEM, "out of memory");
	for (uint32_t i = 0; i < o->vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		vm->before = calloc(w->st[0].n + 1, 8);
		if (!vm->before)
			return fail(err, len, KF_ERR_SYSTEM, "out of memory");
		for (uint32_t j = 0; j < o->vcpus; j++) {
			struct kf_vcpu *v = &vm->vcpus[j];
			v->before = calloc(w->st[1].n + 1, 8);
			if (!v->before)
				return fail(err, len, KF_ERR_SYSTEM, "out of memory");
			w->slots_per_run += v->pass_touches < v->limit ? v->pass_touches : v->limit;
		}
	}

	/* One thread per vCPU, created with every signal blocked (see vcpu_main). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (uint32_t i = 0; i < o->vms && !rc; i++) {
		for (uint32_t j = 0; j < o->vcpus; j++) {
			struct kf_vcpu *v = &w->vms[i].vcpus[j];
			int e = pthread_create(&v->thread, NULL, vcpu_main, v);
			if (e) {
				rc = fail(err, len, KF_ERR_SYSTEM, "creating the vCPU thread: %s", strerror(e));
				break;
			}
			v->thread_started = 1;
			w->threads++;
			char name[32];
			snprintf(name, sizeof(name), "kf-vcpu%u.%u", i, j);
			name[15] = 0;   /* the kernel's limit */
			pthread_setname_np(v->thread, name);
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_lock(&w->mu);
	while (w->ready < w->threads)
		pthread_cond_wait(&w->cv_done, &w->mu);
	pthread_mutex_unlock(&w->mu);
	return rc;
#endif
}

#if KF_X86
static void kick_vcpus(struct kf_workload *w)
{
	w->abort_pass = 1;
	for (uint32_t i = 0; i < w->n_vms_built; i++)
		for (uint32_t j = 0; j < w->o.vcpus; j++) {
			struct kf_vcpu *v = &w->vms[i].vcpus[j];
			if (v->run)
				v->run->immediate_exit = 1;   /* a KVM_RUN not yet entered returns at once */
			if (v->thread_started && kick_installed)
				pthread_kill(v->thread, kick_signal());
		}
}

/* Runs one pass on every vCPU thread and waits for all; kicks them out of KVM_RUN on cancel. */
static void run_pass(struct kf_workload *w)
{
	pthread_mutex_lock(&w->mu);
	w->finished = 0;
	w->gen++;
	pthread_cond_broadcast(&w->cv_start);
	while (w->finished < w->threads) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&w->cv_done, &w->mu, &ts);
		if (w->cancel && *w->cancel && w->finished < w->threads)
			kick_vcpus(w);
	}
	pthread_mutex_unlock(&w->mu);
}

/* Counts the distinct slots each vCPU wrote in this pass and how many hold the run's value. */
static void verify(struct kf_workload *w, uint64_t *touched, uint64_t *ok)
{
	*touched = *ok = 0;
	for (uint32_t i = 0; i < w->o.vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		for (uint32_t j = 0; j < w->o.vcpus; j++) {
			struct kf_vcpu *v = &vm->vcpus[j];
			uint64_t distinct = v->done < v->limit ? v->done : v->limit, x = v->x0;
			for (uint64_t k = 0; k < distinct;) {   /* the guest's walk, replayed */
				x = (x * v->a + v->c) & v->mask;
				if (x >= v->limit)
					continue;
				k++;
				*ok += vm->mem[v->base_gpa + x * w->o.stride] == w->value;
			}
			*touched += distinct;
		}
	}
}

static int first_vcpu_error(struct kf_workload *w, char *err, size_t len)
{
	for (uint32_t i = 0; i < w->o.vms; i++) {
		if (w->vms[i].inval_err)
			return fail(err, len, w->vms[i].inval_err, "invalidating VM %u's memory: %s", i, w->vms[i].inval_msg);
		for (uint32_t j = 0; j < w->o.vcpus; j++) {
			struct kf_vcpu *v = &w->vms[i].vcpus[j];
			if (v->err && v->err != KF_ERR_CANCELLED)
				return fail(err, len, v->err, "%s", v->errmsg);
		}
	}
	for (uint32_t i = 0; i < w->o.vms; i++)
		for (uint32_t j = 0; j < w->o.vcpus; j++)
			if (w->vms[i].vcpus[j].err == KF_ERR_CANCELLED)
				return fail(err, len, KF_ERR_CANCELLED, "workload cancelled");
	return KF_OK;
}

static int stats_snapshot(struct kf_workload *w, char *err, size_t len)
{
	for (uint32_t i = 0; i < w->o.vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		if (stats_read(w, &w->st[0], vm->stats_fd, vm->before))
			return fail(err, len, KF_ERR_SYSTEM, "reading VM stats: %s", strerror(errno));
		for (uint32_t j = 0; j < w->o.vcpus; j++)
			if (stats_read(w, &w->st[1], vm->vcpus[j].stats_fd, vm->vcpus[j].before))
				return fail(err, len, KF_ERR_SYSTEM, "reading vCPU stats: %s", strerror(errno));
	}
	return KF_OK;
}

static int stats_delta(struct kf_workload *w, struct kf_run *run, char *err, size_t len)
{
	for (uint32_t i = 0; i < w->o.vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		uint64_t *d = run->vm_delta + (size_t)i * w->st[0].n;
		if (stats_read(w, &w->st[0], vm->stats_fd, d))
			return fail(err, len, KF_ERR_SYSTEM, "reading VM stats: %s", strerror(errno));
		for (uint32_t k = 0; k < w->st[0].n; k++)
			d[k] -= vm->before[k];
		for (uint32_t j = 0; j < w->o.vcpus; j++) {
			struct kf_vcpu *v = &vm->vcpus[j];
			d = run->vcpu_delta + ((size_t)i * w->o.vcpus + j) * w->st[1].n;
			if (stats_read(w, &w->st[1], v->stats_fd, d))
				return fail(err, len, KF_ERR_SYSTEM, "reading vCPU stats: %s", strerror(errno));
			for (uint32_t k = 0; k < w->st[1].n; k++)
				d[k] -= v->before[k];
		}
	}
	return KF_OK;
}

static struct kf_run *new_run(struct kf_workload *w)
{
	if (w->n_runs == w->cap_runs) {
		uint32_t cap = w->cap_runs ? w->cap_runs * 2 : 16;
		struct kf_run **r = realloc(w->runs, cap * sizeof(*r));
		if (!r)
			return NULL;
		w->runs = r;
		w->cap_runs = cap;
	}
	struct kf_run *run = calloc(1, sizeof(*run));
	if (!run)
		return NULL;
	run->vm_delta = calloc((size_t)w->o.vms * w->st[0].n + 1, 8);
	run->vcpu_delta = calloc((size_t)w->o.vms * w->o.vcpus * w->st[1].n + 1, 8);
	if (!run->vm_delta || !run->vcpu_delta) {
		free(run->vm_delta);
		free(run->vcpu_delta);
		free(run);
		return NULL;
	}
	return run;
}

static void start_invalidators(struct kf_workload *w)
{
	w->inval_active = 1;
	for (uint32_t i = 0; i < w->o.vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		vm->inval_started = pthread_create(&vm->inval_thread, NULL, inval_main, vm) == 0;
		if (!vm->inval_started) {
			vm->inval_err = KF_ERR_SYSTEM;
			snprintf(vm->inval_msg, sizeof(vm->inval_msg), "cannot create the invalidation thread");
		}
	}
}

static void stop_invalidators(struct kf_workload *w)
{
	w->inval_active = 0;
	for (uint32_t i = 0; i < w->o.vms; i++)
		if (w->vms[i].inval_started) {
			pthread_join(w->vms[i].inval_thread, NULL);
			w->vms[i].inval_started = 0;
		}
}
#endif

int kf_workload_run(struct kf_workload *w, kf_run_cb cb, void *ctx, const volatile int *cancel,
		    char *err, size_t len)
{
#if !KF_X86
	return fail(err, len, KF_ERR_UNSUPPORTED, "the built-in workload needs an x86-64 KVM host");
#else
	if (!w || w->n_vms_built != w->o.vms || w->threads != w->o.vms * w->o.vcpus)
		return fail(err, len, KF_ERR_INVALID, "kf_workload_run on a workload that was not fully created");
	w->cancel = cancel;
	w->t0 = now_s();
	w->deadline = w->o.duration_s > 0 ? w->t0 + w->o.duration_s : 0;
	if (cb)
		cb(ctx, NULL);
	int rc = KF_OK;
	for (uint32_t r = 0; !w->o.runs || r < w->o.runs; r++) {
		if (cancel && *cancel)
			return fail(err, len, KF_ERR_CANCELLED, "workload cancelled");
		if (r > 0 && w->deadline > 0 && now_s() >= w->deadline)
			break;
		struct kf_run *run = new_run(w);
		if (!run)
			return fail(err, len, KF_ERR_SYSTEM, "out of memory for run %u", r);
		w->runs[w->n_runs] = run;   /* owned from here; counted only once complete */
		run->index = r;
		w->value = (uint8_t)(r % 255 + 1);
		uint64_t inval0 = 0;
		for (uint32_t i = 0; i < w->o.vms; i++)
			inval0 += w->vms[i].invalidations;
		if (r == 1 && w->o.burst) {
			double b0 = now_s();
			if ((rc = burst(w, err, len))) {
				free(run->vm_delta), free(run->vcpu_delta), free(run);
				return rc;
			}
			run->burst = w->o.burst;
			run->burst_s = now_s() - b0;
		}
		if (r == 1 && w->o.heap_burst) {
			double b0 = now_s();
			if ((rc = heap_burst(w, err, len))) {
				free(run->vm_delta), free(run->vcpu_delta), free(run);
				return rc;
			}
			run->heap_burst = w->o.heap_burst;
			run->heap_burst_s = now_s() - b0;
		}
		if (r > 0 && w->o.invalidate == KF_INVAL_BETWEEN)
			for (uint32_t i = 0; i < w->o.vms && !rc; i++)
				rc = invalidate_range(w, &w->vms[i], 0, w->region_size, err, len);
		if (rc || (rc = stats_snapshot(w, err, len))) {
			free(run->vm_delta), free(run->vcpu_delta), free(run);
			return rc;
		}
		double t = now_s();
		run->start_s = t - w->t0;
		w->settle_pass = 0;
		if (w->o.invalidate == KF_INVAL_CONCURRENT)
			start_invalidators(w);
		run_pass(w);
		run->passes = 1;
		uint64_t touches = 0, efaults = 0;
		for (uint32_t i = 0; i < w->o.vms; i++)
			for (uint32_t j = 0; j < w->o.vcpus; j++) {
				touches += w->vms[i].vcpus[j].done;
				run->truncated |= w->vms[i].vcpus[j].truncated;
			}
		if (w->o.invalidate == KF_INVAL_CONCURRENT) {
			stop_invalidators(w);
			if (!(rc = first_vcpu_error(w, err, len))) {
				/* Pass 1 raced the invalidations, which wiped some of its writes (dontneed,
				 * remap). A second pass, with the invalidator stopped, writes the same slots
				 * again, so every touched slot must then be verified. */
				uint64_t touched, ok;
				verify(w, &touched, &ok);
				run->slots_lost = touched - ok;
				w->settle_pass = 1;
				run_pass(w);
				run->passes = 2;
				for (uint32_t i = 0; i < w->o.vms; i++)
					for (uint32_t j = 0; j < w->o.vcpus; j++)
						touches += w->vms[i].vcpus[j].done;
			}
		}
		run->duration_s = now_s() - t;
		if (rc || (rc = first_vcpu_error(w, err, len))) {
			free(run->vm_delta), free(run->vcpu_delta), free(run);
			return rc;
		}
		if ((rc = stats_delta(w, run, err, len))) {
			free(run->vm_delta), free(run->vcpu_delta), free(run);
			return rc;
		}
		for (uint32_t i = 0; i < w->o.vms; i++) {
			run->invalidations += w->vms[i].invalidations;
			for (uint32_t j = 0; j < w->o.vcpus; j++) {
				efaults += w->vms[i].vcpus[j].efaults;
				w->vms[i].vcpus[j].efaults = 0;
			}
		}
		run->invalidations -= inval0;
		run->efault_retries = efaults;
		run->touches = touches;
		verify(w, &run->slots_touched, &run->slots_verified);
		w->n_runs++;
		if (run->slots_verified != run->slots_touched)
			return fail(err, len, KF_ERR_GUEST, "guest writes not visible in host memory: run %u verified "
				    "%llu of %llu touched slots (value 0x%02x)", r,
				    (unsigned long long)run->slots_verified, (unsigned long long)run->slots_touched,
				    w->value);
		if (cb)
			cb(ctx, run);
		if (run->truncated)
			break;
	}
	return KF_OK;
#endif
}

void kf_workload_destroy(struct kf_workload *w)
{
	if (!w)
		return;
	if (w->sync_init) {
		pthread_mutex_lock(&w->mu);
		w->stop = 1;
		pthread_cond_broadcast(&w->cv_start);
		pthread_mutex_unlock(&w->mu);
	}
	for (uint32_t i = 0; i < w->o.vms; i++) {
		struct kf_vm *vm = &w->vms[i];
		for (uint32_t j = 0; j < KF_MAX_VCPUS; j++) {
			struct kf_vcpu *v = &vm->vcpus[j];
			if (v->thread_started)
				pthread_join(v->thread, NULL);
			/* kvm_run's mapping holds the vCPU file: unmap it or the VM outlives close(). */
			if (v->run)
				munmap(v->run, w->run_mmap_size);
			close_fd(&v->stats_fd);
			close_fd(&v->fd);
			free(v->before);
		}
		close_fd(&vm->stats_fd);
		close_fd(&vm->fd);
		if (vm->raw)
			munmap(vm->raw, vm->raw_len);
		free(vm->before);
	}
	close_fd(&w->kvm_fd);
	for (uint32_t r = 0; r < w->n_runs; r++) {
		free(w->runs[r]->vm_delta);
		free(w->runs[r]->vcpu_delta);
		free(w->runs[r]);
	}
	free(w->runs);
	for (int k = 0; k < 2; k++) {
		free(w->st[k].names);
		free(w->st[k].off);
	}
	free(w->scratch);
	if (w->sync_init) {
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv_start);
		pthread_cond_destroy(&w->cv_done);
	}
	free(w->vms);
	free(w);
}

enum kf_host kf_workload_host(const struct kf_workload *w) { return w->host; }
const char *kf_workload_host_detail(const struct kf_workload *w) { return w->host_detail; }
pid_t kf_workload_vcpu_tid(const struct kf_workload *w, uint32_t vm, uint32_t vcpu)
{
	return vm < w->o.vms && vcpu < w->o.vcpus ? w->vms[vm].vcpus[vcpu].tid : 0;
}
uint32_t kf_workload_n_runs(const struct kf_workload *w) { return w->n_runs; }
const struct kf_run *kf_workload_get_run(const struct kf_workload *w, uint32_t i)
{
	return i < w->n_runs ? w->runs[i] : NULL;
}
uint32_t kf_workload_n_stats(const struct kf_workload *w, int vcpu_stats) { return w->st[vcpu_stats ? 1 : 0].n; }
const char *kf_workload_stat_name(const struct kf_workload *w, int vcpu_stats, uint32_t i)
{
	const struct stat_table *t = &w->st[vcpu_stats ? 1 : 0];
	return i < t->n ? t->names + (size_t)i * t->name_size : "";
}
uint64_t kf_workload_slots_per_run(const struct kf_workload *w) { return w->slots_per_run; }
uint64_t kf_workload_guest_memory(const struct kf_workload *w) { return w->mem_size; }
uint64_t kf_workload_vm_region_hva(const struct kf_workload *w, uint32_t vm)
{
	return vm < w->n_vms_built && w->vms[vm].mem ? (uint64_t)(uintptr_t)(w->vms[vm].mem + KF_REGION_GPA) : 0;
}
