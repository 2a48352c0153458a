/*
 * minivmm.c - test-only KVM guest: one vCPU writes one byte to each of N 4 KiB pages, so each
 * first touch is exactly one real KVM page fault. Follows /work/shared/reference/pvm-vmm/vmm.c
 * (the PVM recipe there); on VMX/SVM hosts the PVM MSR write fails and is skipped, and the same
 * long-mode guest takes EPT/NPT faults.
 *
 *   minivmm <pages> [runs]
 * Protocol (so a tracer can be attached to our pid first):
 *   stdout "ready <pid>\n"; waits for one line on stdin; runs; stdout one JSON line:
 *   {"pid","tid","pages","runs","pf_taken","pf_fixed","slot_hva","slot_bytes","region_gpa","pvm"}
 * pf_taken / pf_fixed are KVM's own per-vCPU counters (KVM_GET_STATS_FD), deltas over all runs.
 * Runs after the first MADV_DONTNEED the region first, so every page faults again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define die(...) do { fprintf(stderr, "minivmm: " __VA_ARGS__); \
	fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno)); exit(1); } while (0)

/* mov %al,(%rbx); add %rsi,%rbx; cmp %rcx,%rbx; jb .-10; out %al,$0x10; jmp . */
static const uint8_t guest[] = { 0x88,0x03, 0x48,0x01,0xf3, 0x48,0x39,0xcb, 0x72,0xf6, 0xe6,0x10, 0xeb,0xfe };

#define CODE_GPA   0x1000ULL
#define PML4_GPA   0x2000ULL
#define PDPT_GPA   0x3000ULL
#define PD_GPA     0x4000ULL
#define PVCS_GPA   0x7f000ULL
#define REGION_GPA 0x200000ULL
#define MB2        (2ULL << 20)
#define MSR_PVM_VCPU_STRUCT 0x4b564d10

static uint64_t stat_value(int fd, const char *want)
{
	struct kvm_stats_header h;
	if (pread(fd, &h, sizeof h, 0) != sizeof h) die("stats header");
	size_t dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	char *d = malloc(dsz * h.num_desc);
	if (pread(fd, d, dsz * h.num_desc, h.desc_offset) != (ssize_t)(dsz * h.num_desc)) die("stats desc");
	uint64_t v = UINT64_MAX;
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *e = (void *)(d + i * dsz);
		if (!strcmp(e->name, want) && pread(fd, &v, 8, h.data_offset + e->offset) != 8) die("stats data");
	}
	free(d);
	return v;
}

int main(int argc, char **argv)
{
	if (argc < 2) { fprintf(stderr, "usage: minivmm <pages> [runs]\n"); return 2; }
	uint64_t pages = strtoull(argv[1], NULL, 0);
	int runs = argc > 2 ? atoi(argv[2]) : 1;
	if (!pages || runs < 1) { fprintf(stderr, "minivmm: pages and runs must be >= 1\n"); return 2; }
	uint64_t region = pages * 4096;
	uint64_t mem_sz = (REGION_GPA + region + MB2 - 1) & ~(MB2 - 1);
	if (mem_sz > (1ULL << 30)) { fprintf(stderr, "minivmm: at most ~1 GiB\n"); return 2; }

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) die("open /dev/kvm");
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) die("KVM_CREATE_VM");
	uint8_t *raw = mmap(NULL, mem_sz + MB2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED) die("mmap");
	uint8_t *mem = (uint8_t *)(((uintptr_t)raw + MB2 - 1) & ~(MB2 - 1));
	madvise(mem, mem_sz, MADV_NOHUGEPAGE);  /* 4 KiB host pages: one fault per touched page */
	struct kvm_userspace_memory_region slot = { .slot = 0, .guest_phys_addr = 0, .memory_size = mem_sz,
						    .userspace_addr = (uintptr_t)mem };
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot) < 0) die("KVM_SET_USER_MEMORY_REGION");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) die("KVM_CREATE_VCPU");
	int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) die("mmap kvm_run");
	static struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } cpuid = { .h.nent = 256 };
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
	if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) die("KVM_SET_CPUID2");

	/* identity map [0, mem_sz) with 2 MiB pages; U/S=1 on every entry (PVM runs the guest at CPL3) */
	uint64_t *pml4 = (void *)(mem + PML4_GPA), *pdpt = (void *)(mem + PDPT_GPA), *pd = (void *)(mem + PD_GPA);
	pml4[0] = PDPT_GPA | 7;
	pdpt[0] = PD_GPA | 7;
	for (uint64_t i = 0; i < mem_sz / MB2; i++) pd[i] = (i * MB2) | 0x80 | 7;
	memcpy(mem + CODE_GPA, guest, sizeof guest);

	struct kvm_sregs sr;
	if (ioctl(vcpu, KVM_GET_SREGS, &sr) < 0) die("KVM_GET_SREGS");
	struct kvm_segment seg = { .base = 0, .limit = 0xffffffff, .selector = 0x18, .type = 3, .present = 1,
				   .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1 };
	sr.ds = sr.es = sr.ss = sr.fs = sr.gs = seg;
	seg.selector = 0x10; seg.type = 11; seg.l = 1; seg.db = 0;
	sr.cs = seg;
	sr.cr3 = PML4_GPA;
	sr.cr4 = 1 << 5;        /* PAE */
	sr.cr0 = 0x80050033;    /* PG|AM|WP|NE|ET|MP|PE */
	sr.efer = 0xd01;        /* NXE|LMA|LME|SCE */
	memset(&sr.ldt, 0, sizeof sr.ldt);
	sr.tr.present = 1; sr.tr.type = 11;
	if (ioctl(vcpu, KVM_SET_SREGS, &sr) < 0) die("KVM_SET_SREGS");
	/* PVM: register the PVCS page so the vCPU runs natively (fails harmlessly elsewhere) */
	struct { struct kvm_msrs h; struct kvm_msr_entry e[1]; } m = { .h.nmsrs = 1 };
	m.e[0].index = MSR_PVM_VCPU_STRUCT;
	m.e[0].data = PVCS_GPA | 1;
	int pvm = ioctl(vcpu, KVM_SET_MSRS, &m) == 1;

	int stats = ioctl(vcpu, KVM_GET_STATS_FD, NULL);
	if (stats < 0) die("KVM_GET_STATS_FD");

	printf("ready %d\n", getpid());
	fflush(stdout);
	char line[64];
	if (!fgets(line, sizeof line, stdin)) return 0;  /* parent went away: nothing to do */

	uint64_t taken0 = stat_value(stats, "pf_taken"), fixed0 = stat_value(stats, "pf_fixed");
	for (int r = 0; r < runs; r++) {
		if (r > 0 && madvise(mem + REGION_GPA, region, MADV_DONTNEED)) die("MADV_DONTNEED");
		struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 2, .rbx = REGION_GPA, .rcx = REGION_GPA + region,
					 .rsi = 4096, .rax = (r + 1) & 0xff, .rsp = PVCS_GPA };
		if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
		for (;;) {
			if (ioctl(vcpu, KVM_RUN, NULL) < 0) {
				if (errno == EINTR || errno == EAGAIN) continue;
				die("KVM_RUN");
			}
			if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x10) break;
			fprintf(stderr, "minivmm: unexpected exit reason %u\n", run->exit_reason);
			return 1;
		}
		run->immediate_exit = 1;  /* complete the OUT before touching vCPU state */
		ioctl(vcpu, KVM_RUN, NULL);
		run->immediate_exit = 0;
		if (mem[REGION_GPA + region - 4096] != ((r + 1) & 0xff)) { fprintf(stderr, "minivmm: guest writes missing\n"); return 1; }
	}
	uint64_t taken = stat_value(stats, "pf_taken") - taken0, fixed = stat_value(stats, "pf_fixed") - fixed0;
	printf("{\"pid\":%d,\"tid\":%ld,\"pages\":%llu,\"runs\":%d,\"pf_taken\":%llu,\"pf_fixed\":%llu,"
	       "\"slot_hva\":%llu,\"slot_bytes\":%llu,\"region_gpa\":%llu,\"pvm\":%s}\n",
	       getpid(), (long)syscall(SYS_gettid), (unsigned long long)pages, runs, (unsigned long long)taken,
	       (unsigned long long)fixed, (unsigned long long)(uintptr_t)mem, (unsigned long long)mem_sz,
	       (unsigned long long)REGION_GPA, pvm ? "true" : "false");
	fflush(stdout);
	return 0;
}
