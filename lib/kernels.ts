/**
 * Kernel knowledge as data: which kernels have the is_page_fault_stale() sign-extension bug.
 *
 * The bug: from 5.16 (a955cad84cda, "KVM: x86/mmu: Retry page fault if root is invalidated by
 * memslot update") is_page_fault_stale() took the mmu_invalidate_seq snapshot as `int`. Once the
 * sequence reaches 0x80000000 the snapshot is sign-extended when compared with the
 * `unsigned long` sequence, every fault looks stale and the vCPU retries forever.
 * Fixed upstream in 6.3 by ba6e3fe25543 (a refactor that grabs the snapshot in
 * kvm_faultin_pfn()) and in stable 6.1.50 by a one-line type change, posted as "[PATCH 6.1]"
 * only (2023-08-24).
 *
 * Per stable line (LINES below), what we could verify and what we could not:
 * - <= 5.14, 5.15.0: no is_page_fault_stale() at all (5.16 introduced it).
 * - 5.15.y (y > 0): unknown. a955cad84cda's follow-up fix carried Cc: stable, so a backport
 *   into 5.15.y is possible; we could not verify either way, and Ubuntu's 5.15.0-N ABI names
 *   say nothing about the sublevel anyway.
 * - 5.16 .. 6.0: affected; these lines were closed before the fix and never got it.
 * - 6.1.0 .. 6.1.49: affected; 6.1.50 and later: fixed.
 * - 6.2.y: affected; the line ended with 6.2.16 (May 2023), before the 6.1-only stable fix.
 * - 6.3 and later: not affected (ba6e3fe25543).
 */
import { readFileSync } from 'node:fs';
import { release as osRelease } from 'node:os';

export interface KernelVersion {
  major: number;
  minor: number;
  /** null when the release string does not carry the real sublevel (distro ABI names) */
  sublevel: number | null;
}

export type KernelStatus = 'affected' | 'fixed' | 'not-affected' | 'unknown';

/**
 * What decided whether a kernel has the bug, strongest first: the observed behaviour (only the
 * detector sees it: the signature on a stuck vCPU), the kernel's own BTF (is_page_fault_stale's
 * prototype), the version table. A version is a hint: distributions backport fixes (and bugs)
 * into old version numbers and hosts run rebuilt modules.
 */
export type KernelEvidence = 'behaviour' | 'btf' | 'version';

/** is_page_fault_stale's prototype as the kernel's BTF has it (native kernelBtf().staleCheck). */
export interface StaleCheckSignature {
  /** false: no FUNC entry (inlined or renamed in this build): BTF says nothing */
  found: boolean;
  /** which BTF had it: 'vmlinux' (KVM built in) or 'kvm' (module BTF) */
  btf: string;
  params: { name: string; type: string; signed: boolean; size: number }[];
}

/** What the BTF prototype says: true / false, or null when it says nothing. */
export function judgeStaleCheck(sig: StaleCheckSignature | null | undefined): { affected: boolean | null; reason: string } {
  if (!sig || !sig.found) {
    return { affected: null, reason: 'is_page_fault_stale has no BTF entry in this kernel (inlined or renamed): BTF says nothing' };
  }
  const where = sig.btf === 'kvm' ? '/sys/kernel/btf/kvm' : '/sys/kernel/btf/vmlinux';
  const proto = `is_page_fault_stale(${sig.params.map((p) => `${p.type === 'pointer' ? '*' : p.type + ' '}${p.name}`).join(', ')})`;
  if (sig.params.length === 3) {
    const seq = sig.params[2];
    if (seq.signed && seq.size === 4) {
      return { affected: true, reason: `${proto} in ${where}: the sequence snapshot is a signed int (the v5.16..v6.2 signature): sign-extended once mmu_invalidate_seq reaches 0x80000000` };
    }
    return { affected: false, reason: `${proto} in ${where}: the snapshot is ${seq.type} (${seq.size * 8}-bit${seq.signed ? ', signed' : ''}), not int: the 6.1.50 stable fix` };
  }
  if (sig.params.length === 2) {
    return { affected: false, reason: `${proto} in ${where}: no snapshot parameter, the fault carries it as unsigned long (fixed since ba6e3fe25543)` };
  }
  return { affected: null, reason: `${proto} in ${where}: an unknown prototype (${sig.params.length} parameters): BTF says nothing` };
}

export interface KernelInfo {
  /** the string judged (uname -r) */
  release: string;
  version: KernelVersion | null;
  /** where the version came from: the release string itself, or /proc/version's distro text */
  versionSource: 'release' | 'proc-version' | 'none';
  /** true: has the bug; false: does not; null: cannot tell (see reason) */
  affected: boolean | null;
  status: KernelStatus;
  /** false when the answer depends on something we could not check (distro backports, ABI names) */
  certain: boolean;
  /** what decided `affected`: the kernel's BTF, or the version table alone; null when neither could */
  decidedBy: Exclude<KernelEvidence, 'behaviour'> | null;
  reason: string;
  /** the BTF evidence, when it was read (null: not read, e.g. offline analysis of a log) */
  btf: (StaleCheckSignature & { affected: boolean | null; reason: string }) | null;
  /** what the version table alone says (kept when BTF decided, to show a disagreement) */
  byVersion: { affected: boolean | null; status: KernelStatus; reason: string };
}

/** Debian (6.1.0-56-amd64) and Ubuntu (5.15.0-91-generic) put an ABI number, not the sublevel, after x.y.0 */
const DEBIAN_ABI = /^-\d+-(?:amd64|arm64|686|686-pae|cloud-amd64|cloud-arm64|rt-amd64|rt-arm64|armmp|armmp-lpae|powerpc64le|s390x)$/;
const UBUNTU_ABI = /^-\d+-(?:generic|lowlatency|aws|azure|gcp|gke|kvm|oracle|ibm|nvidia|raspi|hwe|virtual)(?:-[\w.]+)?$/;

function parseVersion(text: string): { version: KernelVersion; rest: string } | null {
  const m = /^\s*(\d+)\.(\d+)(?:\.(\d+))?(.*)$/.exec(text);
  if (!m) return null;
  return {
    version: { major: Number(m[1]), minor: Number(m[2]), sublevel: m[3] === undefined ? null : Number(m[3]) },
    rest: m[4],
  };
}

/**
 * Candidate upstream versions from /proc/version (Debian: "... Debian 6.1.192-1 (2025-...)"; the
 * same text also names the compiler, "Debian 12.2.0-14") or /proc/version_signature (Ubuntu:
 * "Ubuntu 5.15.0-91.101-generic 5.15.131"). The caller keeps the one of the release's x.y line.
 */
function versionsFromProcText(procVersion: string | undefined): KernelVersion[] {
  if (!procVersion) return [];
  const out: KernelVersion[] = [];
  for (const m of procVersion.matchAll(/Debian (\d+)\.(\d+)\.(\d+)/g)) {
    out.push({ major: Number(m[1]), minor: Number(m[2]), sublevel: Number(m[3]) });
  }
  const ubu = /^Ubuntu \S+ (\d+)\.(\d+)\.(\d+)\s*$/.exec(procVersion.trim());
  if (ubu) out.push({ major: Number(ubu[1]), minor: Number(ubu[2]), sublevel: Number(ubu[3]) });
  return out;
}

function cmp(a: KernelVersion, major: number, minor: number): number {
  return a.major !== major ? a.major - major : a.minor - minor;
}

function judgeVersion(v: KernelVersion, abiOnly: string | null): Omit<VersionJudgement, 'release' | 'version' | 'versionSource'> {
  const name = `${v.major}.${v.minor}${v.sublevel === null ? '' : '.' + v.sublevel}`;
  if (cmp(v, 5, 15) < 0) {
    return { affected: false, status: 'not-affected', certain: true,
      reason: `${name} predates is_page_fault_stale() (added in 5.16 by a955cad84cda)` };
  }
  if (cmp(v, 5, 15) === 0) {
    if (v.sublevel === 0 && !abiOnly) {
      return { affected: false, status: 'not-affected', certain: true,
        reason: '5.15.0 predates is_page_fault_stale() (added in 5.16 by a955cad84cda)' };
    }
    return { affected: null, status: 'unknown', certain: false,
      reason: abiOnly
        ? `${abiOnly}: the sublevel is not in the release string, and whether 5.15.y took a955cad84cda as a backport is unverified`
        : `5.15.y: whether a955cad84cda was backported into this stable line (bringing the int snapshot) is unverified` };
  }
  if (cmp(v, 6, 1) < 0) {
    return { affected: true, status: 'affected', certain: !abiOnly,
      reason: `${name} has the int mmu_seq snapshot from a955cad84cda (5.16); this line ended before the fix` };
  }
  if (cmp(v, 6, 1) === 0) {
    if (v.sublevel === null || abiOnly) {
      return { affected: null, status: 'unknown', certain: false,
        reason: `${abiOnly ?? name}: the 6.1 sublevel is unknown (fixed in 6.1.50); pass /proc/version text (Debian puts the real version there, e.g. "Debian 6.1.192-1")` };
    }
    return v.sublevel < 50
      ? { affected: true, status: 'affected', certain: true,
          reason: `6.1.${v.sublevel} < 6.1.50: is_page_fault_stale() takes the sequence as int (fixed by the 6.1.50 stable patch)` }
      : { affected: false, status: 'fixed', certain: true,
          reason: `6.1.${v.sublevel} >= 6.1.50: has the stable fix (snapshot taken as unsigned long)` };
  }
  if (cmp(v, 6, 2) === 0) {
    return { affected: true, status: 'affected', certain: !abiOnly,
      reason: `${name}: 6.2.y ended (6.2.16, May 2023) before the 6.1-only stable fix; fixed upstream only from 6.3` };
  }
  return { affected: false, status: 'fixed', certain: true,
    reason: `${name} >= 6.3: the snapshot is fault->mmu_seq (unsigned long) since ba6e3fe25543` };
}

type VersionJudgement = Omit<KernelInfo, 'decidedBy' | 'btf' | 'byVersion'>;

/**
 * Judges a kernel: by its BTF (is_page_fault_stale's prototype) when given and telling, else by
 * the release string (uname -r) and /proc/version (or Ubuntu's /proc/version_signature) text,
 * which carries the real version behind distro ABI names. `decidedBy` says which.
 */
export function judgeKernel(release: string, procVersion?: string, staleCheck?: StaleCheckSignature | null): KernelInfo {
  const v = judgeVersion0(release, procVersion);
  const byVersion = { affected: v.affected, status: v.status, reason: v.reason };
  const fromBtf = staleCheck ? { ...staleCheck, ...judgeStaleCheck(staleCheck) } : null;
  if (fromBtf && fromBtf.affected !== null) {
    const disagrees = v.affected !== null && v.affected !== fromBtf.affected;
    return {
      ...v,
      affected: fromBtf.affected,
      status: fromBtf.affected ? 'affected' : v.status === 'not-affected' ? 'not-affected' : 'fixed',
      certain: true,
      decidedBy: 'btf',
      reason: `from the kernel's BTF: ${fromBtf.reason}` + (disagrees
        ? `; the version table says ${v.status} (${v.reason}), but the kernel's own BTF wins: a backport or a rebuilt kvm module changed it`
        : ''),
      btf: fromBtf,
      byVersion,
    };
  }
  return {
    ...v,
    decidedBy: v.affected === null ? null : 'version',
    reason: v.affected === null ? v.reason : `from the version only: ${v.reason}`,
    btf: fromBtf,
    byVersion,
  };
}

function judgeVersion0(release: string, procVersion?: string): VersionJudgement {
  const parsed = parseVersion(release);
  if (!parsed) {
    return { release, version: null, versionSource: 'none', affected: null, status: 'unknown', certain: false,
      reason: `cannot read a version from kernel release "${release}" (expected e.g. 6.1.52 or 6.1.0-56-amd64)` };
  }
  const { version, rest } = parsed;
  const fromProc = versionsFromProcText(procVersion).find((v) => v.major === version.major && v.minor === version.minor);
  const isAbi = version.sublevel === 0 && (DEBIAN_ABI.test(rest) || UBUNTU_ABI.test(rest));
  if (fromProc) {
    return { release, version: fromProc, versionSource: 'proc-version', ...judgeVersion(fromProc, null) };
  }
  if (isAbi) {
    const abiNote = `${release} is a distro ABI name`;
    const v: KernelVersion = { major: version.major, minor: version.minor, sublevel: null };
    return { release, version: v, versionSource: 'release', ...judgeVersion(v, abiNote) };
  }
  return { release, version, versionSource: 'release', ...judgeVersion(version, null) };
}

/**
 * The running kernel's is_page_fault_stale prototype from its BTF (vmlinux, or the kvm module's
 * split BTF); null when BTF or the addon cannot be read here.
 */
export function hostStaleCheck(): StaleCheckSignature | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { native } = require('./native') as typeof import('./native');
    return (native().kernelBtf() as { staleCheck: StaleCheckSignature }).staleCheck;
  } catch {
    return null;
  }
}

let hostCached: KernelInfo | undefined;

/**
 * The running kernel, judged by its BTF first, then by the version (with /proc/version_signature
 * or /proc/version when readable). Read once per process: neither changes while it runs (the
 * kvm module can be reloaded, but a tool that cares restarts).
 */
export function hostKernel(): KernelInfo {
  if (hostCached) return hostCached;
  let proc: string | undefined;
  for (const f of ['/proc/version_signature', '/proc/version']) {
    try {
      proc = readFileSync(f, 'utf8');
      if (versionsFromProcText(proc).length > 0) break;
    } catch {
      /* not present on this distro */
    }
  }
  hostCached = judgeKernel(osRelease(), proc, hostStaleCheck());
  return hostCached;
}

/** The sequence value at which the int snapshot goes negative (bit 31). */
export const SIGN_BIT_SEQ = 0x80000000;

/**
 * RET_PF_* values of one kernel, names without the prefix (they differ per kernel: the enum in
 * arch/x86/kvm/mmu/mmu_internal.h; the values 6.1 and 6.12 report are in docs/kernels.md).
 * FAULT_RET records carry them; FIXED, SPURIOUS, EMULATE and WRITE_PROTECTED mean the fault was
 * handled (mapped), RETRY that it was abandoned (stale, or an invalidation in progress).
 */
export interface RetPfTable {
  RETRY: number;
  FIXED: number;
  SPURIOUS: number;
  EMULATE?: number;
  WRITE_PROTECTED?: number;
  INVALID?: number;
  CONTINUE?: number;
}
/** 5.10 .. 5.15 (no RET_PF_CONTINUE yet) */
export const RET_PF_5: Readonly<RetPfTable> = Object.freeze({ RETRY: 0, EMULATE: 1, INVALID: 2, FIXED: 3, SPURIOUS: 4 });
/** v6.1 (the incident's kernel: MAP_RET ret = 4 is RET_PF_FIXED) */
export const RET_PF_6_1: Readonly<RetPfTable> = Object.freeze({ CONTINUE: 0, RETRY: 1, EMULATE: 2, INVALID: 3, FIXED: 4, SPURIOUS: 5 });
/** v6.12 .. v6.18 (RET_PF_WRITE_PROTECTED inserted) */
export const RET_PF_6_12: Readonly<RetPfTable> = Object.freeze({ CONTINUE: 0, RETRY: 1, EMULATE: 2, WRITE_PROTECTED: 3, INVALID: 4, FIXED: 5, SPURIOUS: 6 });

/**
 * The one rule for which RET_PF_* table decodes a trace: the kernel's own values when they are
 * known (the live tracer reads them from BTF, as { RET_PF_RETRY: 1, ... }; a capture keeps them,
 * as { RETRY: 1, ... }), else by the kernel's version (6.12+, 5.x, else 6.1's), else 6.1's: the
 * incident's kernel, where the bpftrace logs that name no kernel come from.
 */
export function retPfTable(known?: Readonly<Record<string, unknown>> | null, kernel?: Pick<KernelInfo, 'version'> | null): RetPfTable {
  if (known) {
    const t: Record<string, number> = {};
    for (const [k, v] of Object.entries(known)) if (typeof v === 'number') t[k.replace(/^RET_PF_/, '')] = v;
    if (Number.isInteger(t.RETRY) && Number.isInteger(t.FIXED) && Number.isInteger(t.SPURIOUS)) return t as unknown as RetPfTable;
  }
  const v = kernel?.version;
  if (v && (v.major > 6 || (v.major === 6 && v.minor >= 12))) return { ...RET_PF_6_12 };
  if (v && v.major < 6) return { ...RET_PF_5 };
  return { ...RET_PF_6_1 };
}

/**
 * The RET_PF values that mean "handled" (FIXED, SPURIOUS, EMULATE, WRITE_PROTECTED), for a
 * comparison per record; a value the kernel lacks is -2, which no ret is (UNKNOWN_RET is INT32_MIN).
 */
export function handledRets(t: Readonly<RetPfTable>): [fixed: number, spurious: number, emulate: number, writeProtected: number] {
  return [t.FIXED, t.SPURIOUS, t.EMULATE ?? -2, t.WRITE_PROTECTED ?? -2];
}
