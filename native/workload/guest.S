/* guest.S - the workload guest (NOT built: assembled by hand only to produce the byte array
 * kf_guest_code[] in vmm.c; rebuild with `as --64 -o /tmp/g.o guest.S && objdump -d /tmp/g.o`).
 *
 * One program serves every pattern: it walks a full-period LCG over [0, limit) and writes one
 * byte at base + x * stride for each accepted x.  With a = 1, c = 1 the walk is sequential (one
 * hot RIP, every fault on the next page, like a guest zeroing a hugepage); with an odd c and
 * a = 1 mod 4 it is a pseudo-random permutation, so each slot is still touched exactly once per
 * period; "hot" is the random walk over a small limit.
 *
 * Register contract (set by the VMM with KVM_SET_REGS before every chunk):
 *   rbx = base gpa of this vCPU's slice   rsi = stride           al  = byte value to write
 *   rcx = touches in this chunk (>= 1)     rdx = LCG state x      r8  = multiplier a
 *   r9  = increment c                      r10 = mask (2^k - 1)   r11 = limit (slots, <= mask+1)
 * The guest leaves with "out %al,$0x10" (KVM_EXIT_IO on port 0x10 on VMX/SVM; under PVM the OUT
 * #GPs at hardware CPL3 and KVM emulates it). rdx carries the LCG state to the next chunk.
 */
	.text
	.code64
	.globl kf_guest
kf_guest:
1:	imul	%r8, %rdx		/* x = (x * a + c) & mask */
	add	%r9, %rdx
	and	%r10, %rdx
	cmp	%r11, %rdx		/* outside the slot range: draw again */
	jae	1b
	mov	%rdx, %rdi
	imul	%rsi, %rdi
	mov	%al, (%rbx,%rdi)	/* the touch: the one hot RIP that faults */
	dec	%rcx
	jnz	1b
	out	%al, $0x10		/* chunk done: back to the VMM */
2:	jmp	2b
