/**
 * Hex text of the numbers kvmfault prints (addresses, sequences, VM ids): lower case, no 0x.
 *
 * Number#toString(16) takes V8's slow double-to-radix path; verdicts format several addresses
 * each, so hex goes through a byte table instead. 64-bit values arrive as two u32 halves (the
 * record's rip and vm id) or as an exact non-negative double below 2^53.
 */
const HEX2: readonly string[] = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));

/** 8 hex digits of a u32 */
export function hex32Padded(x: number): string {
  return HEX2[(x >>> 24) & 255] + HEX2[(x >>> 16) & 255] + HEX2[(x >>> 8) & 255] + HEX2[x & 255];
}

/** a u32 without leading zeros ("0" for 0) */
export function hex32(x: number): string {
  const s = hex32Padded(x);
  let z = 0;
  while (z < 7 && s.charCodeAt(z) === 48) z++;
  return z === 0 ? s : s.slice(z);
}

/** a 64-bit value from its u32 halves, without leading zeros */
export function hex64(lo: number, hi: number): string {
  return hi === 0 ? hex32(lo) : hex32(hi) + hex32Padded(lo);
}

/** a 64-bit value from its u32 halves, 16 digits (VM ids) */
export function hex64Padded(lo: number, hi: number): string {
  return hex32Padded(hi) + hex32Padded(lo);
}

/** hex of an exact non-negative integer below 2^53 */
export function hexNum(v: number): string {
  const hi = Math.floor(v / 4294967296);
  return hex64(v - hi * 4294967296, hi);
}

