/* SPDX-License-Identifier: GPL-2.0 */
/*
 * loadgen - the live record producer's driver for the ring benchmarks (bench/ring.ts).
 *
 * Every getppid() of this process fires the raw tracepoint that native/bpf/ringtest.bpf.c
 * (on_getppid, filtered by tgid) turns into one 120-byte record, and also the classic
 * raw_syscalls:sys_enter tracepoint bpftrace uses. So N calls = N records offered to whichever
 * consumer is attached: the exact count every consumer is judged against.
 *
 *   loadgen N [rate]      rate = calls per second (0 or absent: as fast as possible)
 *
 * Waits for a line on stdin (so the consumer can attach to our pid first), makes the calls,
 * prints "<calls> <seconds>" on stdout and exits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	double rate = argc > 2 ? atof(argv[2]) : 0;
	char line[16];

	if (n < 0 || rate < 0) {
		fprintf(stderr, "usage: loadgen N [calls_per_second]\n");
		return 2;
	}
	if (!fgets(line, sizeof line, stdin))
		return 1;
	double t0 = now_s();
	if (rate <= 0) {
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid); /* raw syscall: glibc must not cache it */
	} else {
		/* paced: check the schedule every 32 calls (a clock read per call would cost more
		 * than the call), spin until the next slice is due; no sleeping, so no bursts */
		const long slice = 32;
		for (long i = 0; i < n;) {
			double due = t0 + i / rate;
			while (now_s() < due)
				;
			for (long k = 0; k < slice && i < n; k++, i++)
				syscall(SYS_getppid);
		}
	}
	double secs = now_s() - t0;
	printf("%ld %.6f\n", n, secs);
	return 0;
}
