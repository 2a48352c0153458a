/**
 * Per-vCPU flag bits (VcpuTable.bits), each one fact about the current run of attempts.
 */
/** the invalidation range last seen is in guest frame numbers (KF_FLAG_RANGE_GFN), else hva */
export const RANGE_GFN = 1;
/** the last attempt ended mapped: the next attempt, on any gpa, is progress */
export const MAPPED = 2;
/** a FAULT was counted as the attempt; the FAULTIN on the same gpa that may follow is its fault-in step */
export const FAULT_COUNTED = 4;
/** a fault_seq was sign-extended (upper 32 bits all ones): the bug itself, seen directly */
export const SIGN_EXTENDED = 8;
/** records were lost since the last attempt (discontinuity()): the next attempt starts a new run */
export const AFTER_GAP = 16;
