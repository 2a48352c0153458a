// record.cc - exports the record layout from events.h (offsetof of every field), so the
// TypeScript reader's offsets are checked against the C header by a test.
#include <cstddef>

#include "events.h"
#include "module.h"

namespace {

Napi::Object InitRecord(Napi::Env env, Napi::Object exports) {
  Napi::Object off = Napi::Object::New(env);
#define F(name) off.Set(#name, Napi::Number::New(env, offsetof(struct kvmfault_event, name)))
  F(ts_ns); F(pid); F(tid); F(vm_id); F(vcpu_id); F(kind); F(flags); F(gpa); F(error_code);
  F(hva); F(pfn); F(rip); F(mmu_seq); F(fault_seq); F(in_progress); F(range_start);
  F(range_end); F(ret); F(repeat);
#undef F
  // KF_INVALIDATE_START's overlay of gpa..hva (events.h): who invalidated
  Napi::Object inv = Napi::Object::New(env);
#define F(name) inv.Set(#name, Napi::Number::New(env, offsetof(struct kvmfault_event, name)))
  F(comm); F(stack_id); F(range_event);
#undef F
  Napi::Object rec = Napi::Object::New(env);
  rec.Set("size", Napi::Number::New(env, sizeof(struct kvmfault_event)));
  rec.Set("version", Napi::Number::New(env, KVMFAULT_RECORD_VERSION));
  rec.Set("offsets", off);
  rec.Set("invalidateOffsets", inv);
  rec.Set("stackDepth", Napi::Number::New(env, KF_STACK_DEPTH));
  Napi::Object kinds = Napi::Object::New(env);
#define K(name) kinds.Set(#name, Napi::Number::New(env, KF_##name))
  K(FAULT); K(FAULTIN); K(FAULTIN_RET); K(MAP); K(FAULT_RET); K(INVALIDATE_START);
  K(INVALIDATE_END); K(EXIT); K(TEST);
#undef K
  rec.Set("kinds", kinds);
  Napi::Object flags = Napi::Object::New(env);
#define FL(name) flags.Set(#name, Napi::Number::New(env, KF_FLAG_##name))
  FL(RANGE_GFN); FL(WRITE); FL(EXEC); FL(PRESENT); FL(TDP); FL(RIP_STALE); FL(COALESCED); FL(VM_BY_PID);
#undef FL
  rec.Set("flags", flags);
  exports.Set("record", rec);
  return exports;
}

}  // namespace

KVMFAULT_REGISTER(record, InitRecord);
