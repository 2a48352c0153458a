/**
 * Per-vCPU flag bits (VcpuTable.bits), each one fact about the current run of attempts. A const
 * enum, so tsc writes the literals in (record.ts says why the hot path wants that).
 */
export const enum Bit {
  /** the invalidation range last seen is in guest frame numbers (KF_FLAG_RANGE_GFN), else hva */
  RANGE_GFN = 1,
  /** the last attempt ended mapped: the next attempt, on any gpa, is progress */
  MAPPED = 2,
  /** a FAULT was counted as the attempt; the FAULTIN on the same gpa that may follow is its fault-in step */
  FAULT_COUNTED = 4,
  /** a fault_seq was sign-extended (upper 32 bits all ones): the bug itself, seen directly */
  SIGN_EXTENDED = 8,
  /** records were lost since the last attempt (discontinuity()): the next attempt starts a new run */
  AFTER_GAP = 16,
}
