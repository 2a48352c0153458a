/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ring_submit.bpf.h - how every kvmfault BPF program hands a record to user space.
 *
 * Include once per program (each .bpf.c is its own object). Defines the settings and counters
 * every program has, so the addon reads them the same way through any skeleton:
 *   const volatile wakeup_bytes  (rodata, set before load)
 *   kf_submitted, kf_dropped     (bss, read by the addon for stats)
 *
 * Wakeups: the kernel's default adaptive wakeup wakes the consumer whenever it has caught up,
 * which at high rates means nearly every record, and the producer collapses.
 * With wakeup_bytes > 0 a record is submitted without a wakeup until that many bytes are
 * pending, then with a forced one; the consumer picks up a tail below the threshold with a
 * short timer. wakeup_bytes = 0 keeps the kernel default.
 */
#ifndef KVMFAULT_RING_SUBMIT_BPF_H
#define KVMFAULT_RING_SUBMIT_BPF_H

const volatile __u64 wakeup_bytes = 0;

__u64 kf_submitted = 0;
__u64 kf_dropped = 0;

/* Reserve a record; counts a drop when the ring is full. */
static __always_inline void *kf_reserve(void *ring, __u64 size)
{
	void *e = bpf_ringbuf_reserve(ring, size, 0);
	if (!e)
		__sync_fetch_and_add(&kf_dropped, 1);
	return e;
}

static __always_inline void kf_submit(void *ring, void *e)
{
	__u64 flags = 0;
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
			BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
	__sync_fetch_and_add(&kf_submitted, 1);
}

#endif
