// ringtest.cc - TEST/BENCHMARK-ONLY record producer (native/bpf/ringtest.bpf.c), exported as
// `native().RingTest`. Not used by the tracer.
//
//   new RingTest({ ringSize?: bytes (power of 2, >= page), wakeupBytes?: number })
//   run(n, discardEvery = 0) -> records submitted (n attempts in ONE BPF_PROG_TEST_RUN; every
//                               discardEvery-th attempt is reserved then discarded)
//   setTarget(tgid)          -> the raw tracepoint records every getppid() of that process
//   ringFd()                 -> the ring map fd (owned by this object)
//   stats()                  -> { submitted, dropped, nextSeq }
//   close()                  -> idempotent; detaches and frees the programs and the map
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <string>

#include "module.h"
#include "ringtest.skel.h"

namespace {

// Mirrors struct emit_args in ringtest.bpf.c (the BPF_PROG_TEST_RUN context).
struct EmitArgs {
  __u32 count;
  __u32 discard_every;
  __u32 submitted;
  __u32 pad;
};

class RingTest : public Napi::ObjectWrap<RingTest> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingTest", {
        InstanceMethod("run", &RingTest::Run),
        InstanceMethod("setTarget", &RingTest::SetTarget),
        InstanceMethod("ringFd", &RingTest::RingFd),
        InstanceMethod("stats", &RingTest::Stats),
        InstanceMethod("close", &RingTest::Close),
    });
  }

  RingTest(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingTest>(info) {
    Napi::Env env = info.Env();
    uint32_t ringSize = 1u << 20;
    uint64_t wakeupBytes = 0;
    bool kvmFloor = false;
    if (info.Length() > 0 && info[0].IsObject()) {
      Napi::Object o = info[0].As<Napi::Object>();
      if (o.Has("ringSize") && o.Get("ringSize").IsNumber())
        ringSize = o.Get("ringSize").As<Napi::Number>().Uint32Value();
      if (o.Has("wakeupBytes") && o.Get("wakeupBytes").IsNumber())
        wakeupBytes = static_cast<uint64_t>(o.Get("wakeupBytes").As<Napi::Number>().DoubleValue());
      kvmFloor = o.Has("kvmFloor") && o.Get("kvmFloor").ToBoolean();
    }
    if (ringSize < 4096 || (ringSize & (ringSize - 1))) {
      Napi::RangeError::New(env, "RingTest: ringSize must be a power of 2 and at least 4096 bytes")
          .ThrowAsJavaScriptException();
      return;
    }
    skel_ = ringtest_bpf__open();
    if (!skel_) {
      kvmfault::ThrowErrno(env, "RingTest: open BPF object", errno);
      return;
    }
    bpf_map__set_max_entries(skel_->maps.ring, ringSize);
    skel_->rodata->wakeup_bytes = wakeupBytes;
    // the KVM floor programs: only when asked (their tracepoint exists only with KVM)
    bpf_program__set_autoload(skel_->progs.walk_floor_nop, kvmFloor);
    bpf_program__set_autoload(skel_->progs.walk_floor_ring, kvmFloor);
    bpf_program__set_autoload(skel_->progs.pf_floor_nop, kvmFloor);
    bpf_program__set_autoload(skel_->progs.pf_floor_ring, kvmFloor);
    int err = ringtest_bpf__load(skel_);
    if (err) {
      Destroy();
      kvmfault::ThrowErrno(env, "RingTest: load BPF programs", err ? -err : errno,
                           kvmFloor ? "kvmFloor needs KVM's tp_btf tracepoints kvm_mmu_pagetable_walk and kvm_page_fault (KVM loaded, BTF)"
                                    : "run as root (CAP_BPF + CAP_PERFMON); the kernel needs bpf_loop (5.17+)");
      return;
    }
    err = ringtest_bpf__attach(skel_);
    if (err) {
      Destroy();
      kvmfault::ThrowErrno(env, "RingTest: attach raw_tracepoint sys_enter", -err, "run as root");
      return;
    }
    exitHook_.Arm(env, [](void* self) { static_cast<RingTest*>(self)->Destroy(); }, this);
  }
  ~RingTest() override { Destroy(); }

 private:
  void Destroy() {
    if (skel_) ringtest_bpf__destroy(skel_);
    skel_ = nullptr;
    exitHook_.Disarm();
  }
  bool CheckOpen(Napi::Env env, const char* what) {
    if (skel_) return true;
    Napi::Error::New(env, std::string("RingTest.") + what + ": closed").ThrowAsJavaScriptException();
    return false;
  }

  Napi::Value Run(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "run")) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, "RingTest.run(n, discardEvery?): n must be a number").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double n = info[0].As<Napi::Number>().DoubleValue();
    if (!(n >= 0 && n <= (1 << 23))) {  // bpf_loop's limit: 1 << 23 iterations
      Napi::RangeError::New(env, "RingTest.run(n): n must be between 0 and 8388608").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    EmitArgs args = {};
    args.count = static_cast<__u32>(n);
    args.discard_every = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
    // syscall programs take no ctx_out: the kernel writes the context back into ctx_in
    LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args, .ctx_size_in = sizeof(args));
    int err = bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.emit), &opts);
    if (err) {
      kvmfault::ThrowErrno(env, "RingTest.run: BPF_PROG_TEST_RUN", errno);
      return env.Undefined();
    }
    return Napi::Number::New(env, args.submitted);
  }

  Napi::Value SetTarget(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "setTarget")) return env.Undefined();
    skel_->bss->target_tgid = info[0].As<Napi::Number>().Uint32Value();
    return env.Undefined();
  }

  Napi::Value RingFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "ringFd")) return env.Undefined();
    return Napi::Number::New(env, bpf_map__fd(skel_->maps.ring));
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "stats")) return env.Undefined();
    // plain reads of counters the programs update atomically: a snapshot, exact once idle
    Napi::Object o = Napi::Object::New(env);
    o.Set("submitted", Napi::Number::New(env, static_cast<double>(__atomic_load_n(&skel_->bss->kf_submitted, __ATOMIC_RELAXED))));
    o.Set("dropped", Napi::Number::New(env, static_cast<double>(__atomic_load_n(&skel_->bss->kf_dropped, __ATOMIC_RELAXED))));
    o.Set("nextSeq", Napi::Number::New(env, static_cast<double>(__atomic_load_n(&skel_->bss->next_seq, __ATOMIC_RELAXED))));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Destroy();
    return info.Env().Undefined();
  }

  kvmfault::EnvExitHook exitHook_;
  ringtest_bpf* skel_ = nullptr;
};

Napi::Object InitRingTest(Napi::Env env, Napi::Object exports) {
  exports.Set("RingTest", RingTest::Define(env));
  return exports;
}

}  // namespace

KVMFAULT_REGISTER(ringtest, InitRingTest);
