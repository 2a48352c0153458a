/**
 * Evidence outranks the version: the order in which a verdict's cause and a kernel's judgement
 * are decided — observed behaviour, then the kernel's own BTF, then the version table — one
 * test per rule. Runs without root (`npm run test:unit`).
 */
import assert from 'node:assert/strict';
import { StaleFaultDetector, Verdict } from '../lib/detector';
import { judgeKernel, judgeStaleCheck, StaleCheckSignature } from '../lib/kernels';
import { stuckSignExtension, TraceBuilder, vcpu } from './helpers/scenarios';

const ptr = (name: string) => ({ name, type: 'pointer', signed: false, size: 8 });
const BTF_BUG: StaleCheckSignature = { found: true, btf: 'kvm', params: [ptr('vcpu'), ptr('fault'), { name: 'mmu_seq', type: 'int', signed: true, size: 4 }] };
const BTF_STABLE_FIX: StaleCheckSignature = { found: true, btf: 'kvm', params: [ptr('vcpu'), ptr('fault'), { name: 'mmu_seq', type: 'long unsigned int', signed: false, size: 8 }] };
const BTF_FIXED: StaleCheckSignature = { found: true, btf: 'kvm', params: [ptr('vcpu'), ptr('fault')] };
const BTF_ABSENT: StaleCheckSignature = { found: false, btf: '', params: [] };
// the incident kernel: Debian's 6.1.192 (version: fixed) with the bug rebuilt into kvm.ko
const DEBIAN_61_PROC = 'Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2025-12-01)';

/** Stuck on one gpa with the sequence past 0x80000000 and constant, in-progress NOT visible (our tracepoint mode). */
function stuckSeqOnly(attempts = 1500): ReturnType<TraceBuilder['batch']> {
  const b = new TraceBuilder();
  const v = vcpu(6000, 0);
  for (let i = 0; i < attempts; i++) b.fault(v, 1e9 + i * 1e6, 0x4000000, { faultSeq: 0x80000000 });
  return b.batch();
}

function final(batch: ReturnType<TraceBuilder['batch']>, kernel: ReturnType<typeof judgeKernel> | null): { v: Verdict; d: StaleFaultDetector } {
  const d = new StaleFaultDetector({ kernel });
  d.push(batch);
  return { v: d.snapshot()[0], d };
}

describe('41 evidence order: behaviour, then BTF, then the version', () => {
  describe('the kernel judgement: BTF before the version', () => {
    it('BTF with an int mmu_seq parameter: affected, decided by BTF, though the version says fixed (the incident kernel)', () => {
      const k = judgeKernel('6.1.0-57-amd64', DEBIAN_61_PROC, BTF_BUG);
      assert.equal(k.affected, true);
      assert.equal(k.decidedBy, 'btf');
      assert.equal(k.byVersion.affected, false);
      assert.match(k.reason, /^from the kernel's BTF: is_page_fault_stale\(\*vcpu, \*fault, int mmu_seq\) in \/sys\/kernel\/btf\/kvm/);
      assert.match(k.reason, /the version table says fixed .* but the kernel's own BTF wins/);
    });

    it('BTF with two parameters: fixed, decided by BTF, though the version says affected', () => {
      const k = judgeKernel('6.1.30', undefined, BTF_FIXED);
      assert.equal(k.affected, false);
      assert.equal(k.decidedBy, 'btf');
      assert.equal(k.byVersion.affected, true);
    });

    it("BTF with 6.1.50's unsigned long snapshot: fixed", () => {
      assert.equal(judgeStaleCheck(BTF_STABLE_FIX).affected, false);
      assert.match(judgeStaleCheck(BTF_STABLE_FIX).reason, /6\.1\.50 stable fix/);
    });

    it('no BTF entry (inlined, renamed) or none read: the version decides and says so', () => {
      for (const btf of [BTF_ABSENT, null]) {
        const k = judgeKernel('6.1.30', undefined, btf);
        assert.equal(k.affected, true);
        assert.equal(k.decidedBy, 'version');
        assert.match(k.reason, /^from the version only: /);
      }
      const unknown = judgeKernel('6.1.0-56-amd64', undefined, BTF_ABSENT);
      assert.equal(unknown.affected, null);
      assert.equal(unknown.decidedBy, null);
    });
  });

  describe('a stuck vCPU: the records first', () => {
    it('the signature in the records (seq >= 0x80000000 constant, nothing in progress): seq-sign-extension, high, by behaviour — against every kernel judgement', () => {
      for (const kernel of [null, judgeKernel('6.1.30'), judgeKernel('6.18.44'), judgeKernel('6.1.0-57-amd64', DEBIAN_61_PROC, BTF_FIXED)]) {
        const { v } = final(stuckSignExtension(2000), kernel);
        assert.equal(v.state, 'stuck');
        assert.equal(v.cause, 'seq-sign-extension', `kernel ${kernel?.release}`);
        assert.equal(v.confidence, 'high');
        assert.equal(v.decidedBy, 'behaviour');
        if (kernel?.affected === false) assert.match(v.explanation, /not affected, but the records outrank it/);
      }
    });

    it('in-progress not visible: the kernel fills the gap — BTF says affected: seq-sign-extension, medium, by BTF', () => {
      const { v } = final(stuckSeqOnly(), judgeKernel('6.1.0-57-amd64', DEBIAN_61_PROC, BTF_BUG));
      assert.equal(v.cause, 'seq-sign-extension');
      assert.equal(v.confidence, 'medium');
      assert.equal(v.decidedBy, 'btf');
      assert.match(v.explanation, /affected by its own BTF/);
    });

    it('in-progress not visible, the version alone says affected: seq-sign-extension, medium, "from the version only"', () => {
      const { v } = final(stuckSeqOnly(), judgeKernel('6.1.30', undefined, BTF_ABSENT));
      assert.equal(v.cause, 'seq-sign-extension');
      assert.equal(v.decidedBy, 'version');
      assert.match(v.explanation, /from the version only/);
    });

    it('in-progress not visible and the kernel judged not affected: unknown, low, saying what would tell', () => {
      const { v } = final(stuckSeqOnly(), judgeKernel('6.18.44', undefined, BTF_FIXED));
      assert.equal(v.cause, 'unknown');
      assert.equal(v.confidence, 'low');
      assert.equal(v.decidedBy, 'behaviour');
      assert.match(v.explanation, /in-progress is not visible .* a mode that reads the VM's invalidation state/);
    });
  });

  describe("the VM's forecast", () => {
    it('a VM whose vCPU shows the signature is affected by behaviour, never "harmless", whatever the kernel judgement', () => {
      const { d } = final(stuckSignExtension(2000), judgeKernel('6.18.44', undefined, BTF_FIXED));
      const [f] = d.forecast();
      assert.equal(f.crossed, true);
      assert.equal(f.kernelAffected, true);
      assert.equal(f.decidedBy, 'behaviour');
      assert.match(f.warning, /every fault of this VM retries forever \(kernel affected: a vCPU of this VM shows the bug\)/);
      assert.doesNotMatch(f.warning, /harmless|no hang/);
    });

    it('before the crossing, an affected kernel (by BTF) gets a countdown naming its evidence', () => {
      const b = new TraceBuilder();
      const v = vcpu(7000, 0);
      // 100 invalidations/s from 0x7fffff00: 2.56 s to go
      for (let i = 0; i <= 100; i++) { b.fault(v, 1e9 + i * 1e7, 0x1000 * (i + 1), { mmuSeq: 0x7fffff00 + i, inProgress: 0 }); b.map(v, 1e9 + i * 1e7 + 1000, 0x1000 * (i + 1)); }
      const d = new StaleFaultDetector({ kernel: judgeKernel('6.1.0-57-amd64', DEBIAN_61_PROC, BTF_BUG) });
      d.push(b.batch());
      const [f] = d.forecast();
      assert.equal(f.crossed, false);
      assert.equal(f.kernelAffected, true);
      assert.equal(f.decidedBy, 'btf');
      assert.ok(f.secondsToSignBit! > 1.5 && f.secondsToSignBit! < 3.5, `${f.secondsToSignBit}`);
      assert.match(f.warning, /reaches 80000000 in .* \(kernel affected, by its BTF\)/);
    });
  });

  describe('what frees a stuck vCPU', () => {
    it('an entry on another gpa (a walk for emulation, a kick) neither frees it nor counts as its attempt; a mapped fault does', () => {
      const b = new TraceBuilder();
      const v = { ...vcpu(8000, 0), rip: 0xffffffffc042220cn };
      const stuck = { mmuSeq: 0x80000000, faultSeq: 0x80000000, inProgress: 0 };
      let ts = 1e9;
      for (let i = 0; i < 1500; i++) b.fault(v, (ts += 1e6), 0x4000000, stuck);
      b.fault(v, (ts += 1e6), 0x8fbcff8, stuck); // the off-path record seen on the incident kernel
      for (let i = 0; i < 10; i++) b.fault(v, (ts += 1e6), 0x4000000, stuck);
      const changes: Verdict[] = [];
      const d = new StaleFaultDetector({ onVerdict: (x) => changes.push(x) });
      d.push(b.batch());
      let [now] = d.snapshot();
      assert.equal(now.state, 'stuck');
      assert.equal(now.gpa, '4000000');
      assert.equal(now.attempts, 1510);
      assert.equal(now.offPathAttempts, 1);
      assert.ok(!changes.some((c) => c.state !== 'stuck' && c.attempts > 1000), 'never left stuck on the way');
      const m = new TraceBuilder();
      m.map(v, ts + 1e6, 0x4000000, stuck);
      d.push(m.batch());
      [now] = d.snapshot();
      assert.equal(now.state, 'progressing');
      assert.equal(now.mapped, 1);
    });

    it('a fault reported mapped twice (MAP and FAULT_RET FIXED, kprobe/fentry modes) counts once', () => {
      const b = new TraceBuilder();
      const v = vcpu(9000, 0);
      for (let p = 0; p < 10; p++) {
        b.fault(v, 1e9 + p * 1e6, 0x1000 * (p + 1), { mmuSeq: 1, inProgress: 0 });
        b.map(v, 1e9 + p * 1e6 + 100, 0x1000 * (p + 1));
        b.faultRet(v, 1e9 + p * 1e6 + 200, 0x1000 * (p + 1), 4);
      }
      const { v: verdict } = final(b.batch(), null);
      assert.equal(verdict.mapped, 10);
      assert.equal(verdict.totalAttempts, 10);
    });
  });
  describe('signatures need no minimum duration (excerpts)', () => {
    it('1500 attempts with the sign-extension signature within 15 ms: stuck, seq-sign-extension', () => {
      const { v } = final(stuckSignExtension(1500, 10_000), null);
      assert.equal(v.state, 'stuck');
      assert.equal(v.cause, 'seq-sign-extension');
      assert.ok(v.lastSeen - v.firstSeen < 20e6);
    });

    it('20000 attempts in 0.2 s with one invalidation held over the address, sequence still: stuck, invalidation-stuck', () => {
      const b = new TraceBuilder();
      const v = vcpu(9100, 0);
      const gpa = 0x2345000, hva = 0x7f0000000000 + gpa;
      for (let i = 0; i < 20000; i++) b.fault(v, 1e9 + i * 10_000, gpa, { mmuSeq: 0x777, faultSeq: 0x777, inProgress: 1, rangeStart: hva - 4096, rangeEnd: hva + 4096 });
      const { v: verdict } = final(b.batch(), null);
      assert.equal(verdict.state, 'stuck');
      assert.equal(verdict.cause, 'invalidation-stuck');
    });

    it('no signature (small constant sequence, nothing in progress): 2000 attempts in 0.2 s stay retrying', () => {
      const b = new TraceBuilder();
      const v = vcpu(9200, 0);
      for (let i = 0; i < 2000; i++) b.fault(v, 1e9 + i * 100_000, 0xabc000, { mmuSeq: 0x4724e, faultSeq: 0x4724e, inProgress: 0 });
      assert.equal(final(b.batch(), null).v.state, 'retrying');
    });
  });
});
