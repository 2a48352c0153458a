/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cconsumer - the C reference consumer for bench/ring.ts: libbpf's ring_buffer__poll /
 * ring_buffer__consume over the same producer (native/bpf/ringtest.bpf.c) and the same ring
 * settings as the JS consumers, doing the same per-record work (read kind and gpa, check the
 * order of the sequence numbers). Prints one JSON line.
 *
 *   cconsumer live  N RATE RING_BYTES WAKEUP_BYTES LOADGEN
 *       spawn LOADGEN N RATE, record its getppid() calls, consume with ring_buffer__poll
 *       (10 ms timeout, then a consume for the tail below wakeup_bytes) until every submitted
 *       record is in.
 *   cconsumer drain ROUNDS RECORDS RING_BYTES
 *       ROUNDS times: fill the ring with the bpf_loop producer (RECORDS in one
 *       BPF_PROG_TEST_RUN, no consumer running), then time one ring_buffer__consume of it.
 */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "ringtest.skel.h"

/* struct emit_args in ringtest.bpf.c (the BPF_PROG_TEST_RUN context of `emit`) */
struct emit_args {
	__u32 count, discard_every, submitted, pad;
};

static unsigned long long got, out_of_order, bad_size, gpa_sum;
static long long last_seq = -1;

/* The per-record work every consumer in the benchmark does: kind + gpa, order check. */
static int on_record(void *ctx, void *data, size_t len)
{
	const struct kvmfault_event *e = data;
	if (len < sizeof(*e)) {
		bad_size++;
		return 0;
	}
	long long seq = (long long)e->gpa;
	if (seq <= last_seq || e->kind != KF_TEST)
		out_of_order++;
	last_seq = seq;
	gpa_sum += e->gpa;
	got++;
	return 0;
}

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* libbpf's chatter only when something fails */
static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_WARN ? vfprintf(stderr, fmt, ap) : 0;
}

static void fail(const char *what, int err)
{
	printf("{\"error\":\"%s: %s\"}\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static struct ringtest_bpf *open_producer(unsigned long ring_bytes, unsigned long long wakeup_bytes)
{
	struct ringtest_bpf *skel = ringtest_bpf__open();
	if (!skel)
		fail("open ringtest BPF object", errno);
	bpf_map__set_max_entries(skel->maps.ring, ring_bytes);
	skel->rodata->wakeup_bytes = wakeup_bytes;
	int err = ringtest_bpf__load(skel);
	if (err)
		fail("load ringtest BPF programs (run as root)", err);
	return skel;
}

static int live(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: cconsumer live N RATE RING_BYTES WAKEUP_BYTES LOADGEN\n");
		return 2;
	}
	const char *n = argv[2], *rate = argv[3], *loadgen = argv[6];
	struct ringtest_bpf *skel = open_producer(strtoul(argv[4], NULL, 0), strtoull(argv[5], NULL, 0));
	int err = ringtest_bpf__attach(skel);
	if (err)
		fail("attach raw_tracepoint sys_enter", err);
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.ring), on_record, NULL, NULL);
	if (!rb)
		fail("ring_buffer__new", errno);

	int in[2], out[2];
	if (pipe(in) || pipe(out))
		fail("pipe", errno);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl(loadgen, loadgen, n, rate, (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	skel->bss->target_tgid = pid;

	double c0 = cpu_s(), t0 = now_s();
	if (write(in[1], "go\n", 3) != 3)
		fail("start loadgen", errno);
	unsigned long long wakeups = 0;
	int status = 0;
	pid_t done = 0;
	while (!done) {
		int r = ring_buffer__poll(rb, 10);
		if (r > 0)
			wakeups++;
		else if (r == 0)
			ring_buffer__consume(rb); /* timeout: the tail below wakeup_bytes sent no wakeup */
		done = waitpid(pid, &status, WNOHANG);
	}
	/* the producer is idle now: its submitted counter is final */
	double deadline = now_s() + 10;
	while (got + bad_size < __atomic_load_n(&skel->bss->kf_submitted, __ATOMIC_RELAXED) && now_s() < deadline)
		ring_buffer__consume(rb);
	double t1 = now_s(), c1 = cpu_s();

	char buf[128] = { 0 };
	long calls = 0;
	double secs = 0;
	if (read(out[0], buf, sizeof buf - 1) > 0)
		sscanf(buf, "%ld %lf", &calls, &secs);
	printf("{\"consumer\":\"c-libbpf\",\"records\":%llu,\"seconds\":%.6f,\"producerCalls\":%ld,"
	       "\"producerSeconds\":%.6f,\"submitted\":%llu,\"dropped\":%llu,\"outOfOrder\":%llu,"
	       "\"badSize\":%llu,\"wakeups\":%llu,\"cpuSeconds\":%.6f,\"loadgenExit\":%d}\n",
	       got, t1 - t0, calls, secs, (unsigned long long)skel->bss->kf_submitted,
	       (unsigned long long)skel->bss->kf_dropped, out_of_order, bad_size, wakeups, c1 - c0,
	       WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	ring_buffer__free(rb);
	ringtest_bpf__destroy(skel);
	return 0;
}

static int drain(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: cconsumer drain ROUNDS RECORDS RING_BYTES\n");
		return 2;
	}
	int rounds = atoi(argv[2]);
	unsigned records = strtoul(argv[3], NULL, 0);
	struct ringtest_bpf *skel = open_producer(strtoul(argv[4], NULL, 0), 0);
	/* no attach: only the syscall program runs, through BPF_PROG_TEST_RUN */
	struct ring_buffer *rb = ring_buffer__new(bpf_map__fd(skel->maps.ring), on_record, NULL, NULL);
	if (!rb)
		fail("ring_buffer__new", errno);
	printf("{\"consumer\":\"c-libbpf\",\"rounds\":[");
	for (int r = 0; r < rounds; r++) {
		struct emit_args args = { .count = records };
		LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args, .ctx_size_in = sizeof(args));
		int err = bpf_prog_test_run_opts(bpf_program__fd(skel->progs.emit), &opts);
		if (err)
			fail("BPF_PROG_TEST_RUN emit", errno);
		unsigned long long before = got;
		double t0 = now_s();
		ring_buffer__consume(rb);
		double t1 = now_s();
		printf("%s{\"records\":%llu,\"submitted\":%u,\"seconds\":%.9f}", r ? "," : "", got - before,
		       args.submitted, t1 - t0);
	}
	printf("],\"dropped\":%llu,\"outOfOrder\":%llu,\"badSize\":%llu}\n",
	       (unsigned long long)skel->bss->kf_dropped, out_of_order, bad_size);
	ring_buffer__free(rb);
	ringtest_bpf__destroy(skel);
	return 0;
}

int main(int argc, char **argv)
{
	libbpf_set_print(quiet);
	signal(SIGPIPE, SIG_IGN);
	if (argc > 1 && !strcmp(argv[1], "live"))
		return live(argc, argv);
	if (argc > 1 && !strcmp(argv[1], "drain"))
		return drain(argc, argv);
	fprintf(stderr, "usage: cconsumer live N RATE RING_BYTES WAKEUP_BYTES LOADGEN\n"
			"       cconsumer drain ROUNDS RECORDS RING_BYTES\n");
	return 2;
}
