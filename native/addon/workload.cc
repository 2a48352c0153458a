// workload.cc - the built-in KVM guest workload (native/workload/vmm.c) for JS.
//
//   native().workload.detectHost()            -> { host: 'pvm'|'vmx'|'svm'|'unknown', detail }
//   native().workload.run(options, onEvent)   -> { promise, cancel() }
//     onEvent('start', info) once the vCPU threads are up (tids known: a tracer can filter now),
//     onEvent('run', rawRun) after each run; promise -> { ...info, runs: rawRun[] }.
//     burstDone() -> calls of the burst before run 2 made so far (options.burst), any time.
//
// The whole VMM lives on a libuv worker thread (AsyncProgressQueueWorker), so the event loop, and
// a live tracer draining its ring in this process, keep running while the guest faults. The VMM
// is destroyed on that thread before the promise settles: every fd is closed when JS sees the
// result, on errors too. Options arrive validated by lib/workload.ts; this file stays thin.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "module.h"
#include "vmm.h"

namespace {

const char* ErrCode(int rc) {
  switch (rc) {
    case KF_ERR_NO_KVM: return "KVM_UNAVAILABLE";
    case KF_ERR_PERMISSION: return "KVM_PERMISSION";
    case KF_ERR_UNSUPPORTED: return "UNSUPPORTED_HOST";
    case KF_ERR_ENTRY: return "GUEST_ENTRY_FAILED";
    case KF_ERR_GUEST: return "GUEST_FAILED";
    case KF_ERR_CANCELLED: return "ABORT_ERR";
    case KF_ERR_INVALID: return "INVALID_OPTION";
    default: return "SYSTEM_ERROR";
  }
}

// A completed run, copied out of the VMM (which may be destroyed before JS sees it).
struct RunCopy {
  kf_run head{};
  std::vector<double> vm, vcpu;
};

struct Info {
  std::string host, detail;
  std::vector<std::vector<double>> tids;  // [vm][vcpu]
  std::vector<std::string> vm_names, vcpu_names;
  std::vector<double> region_hva;
  double slots_per_run = 0, guest_memory = 0;
};

struct Msg {
  int type = 0;  // 0 start, 1 run
  std::shared_ptr<RunCopy> run;
};

struct CancelFlag {
  volatile int value = 0;
  uint64_t burst_done = 0;  // vmm.c stores it with __atomic; read the same way
};

class WorkloadWorker : public Napi::AsyncProgressQueueWorker<Msg> {
 public:
  WorkloadWorker(Napi::Env env, const kf_workload_opts& opts, Napi::Function on_event,
                 std::shared_ptr<CancelFlag> cancel)
      : Napi::AsyncProgressQueueWorker<Msg>(env, "kvmfault.workload"),
        deferred_(Napi::Promise::Deferred::New(env)),
        opts_(opts),
        cancel_(std::move(cancel)) {
    if (!on_event.IsEmpty()) on_event_ = Napi::Persistent(on_event);
    // Environment teardown (worker thread exit, process exit): stop the guest soon.
    std::shared_ptr<CancelFlag> flag = cancel_;
    hook_ = env.AddCleanupHook(std::function<void()>([flag]() { flag->value = 1; }));
  }
  ~WorkloadWorker() override {
    if (!hook_.IsEmpty()) hook_.Remove(Env());
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute(const ExecutionProgress& progress) override {
    char err[512] = "";
    kf_workload* w = nullptr;
    progress_ = &progress;
    rc_ = kf_workload_create(&opts_, &w, err, sizeof(err));
    if (rc_ == KF_OK) {
      CopyInfo(w);
      rc_ = kf_workload_run(w, &WorkloadWorker::OnRun, this, &cancel_->value, err, sizeof(err));
    }
    kf_workload_destroy(w);  // every fd, thread and mapping, on every path
    progress_ = nullptr;
    if (rc_ != KF_OK) message_ = err;
  }

  void OnProgress(const Msg* msgs, size_t count) override {
    if (on_event_.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (size_t i = 0; i < count; i++) {
      if (msgs[i].type == 0)
        on_event_.Call({Napi::String::New(env, "start"), InfoObject(env)});
      else
        on_event_.Call({Napi::String::New(env, "run"), RunObject(env, *msgs[i].run)});
      if (env.IsExceptionPending()) {
        // A throwing listener must not kill the process from a worker callback: stop the guest
        // and reject with what the listener threw.
        listener_error_ = Napi::Reference<Napi::Value>::New(env.GetAndClearPendingException().Value(), 1);
        cancel_->value = 1;
        return;
      }
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (!listener_error_.IsEmpty()) {
      deferred_.Reject(listener_error_.Value());
      return;
    }
    if (rc_ != KF_OK) {
      Napi::Error e = Napi::Error::New(env, message_);
      e.Set("code", Napi::String::New(env, ErrCode(rc_)));
      if (have_info_) e.Set("partial", Result(env));
      deferred_.Reject(e.Value());
      return;
    }
    deferred_.Resolve(Result(env));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  static void OnRun(void* ctx, const kf_run* run) {
    auto* self = static_cast<WorkloadWorker*>(ctx);
    Msg m;
    if (run) {
      m.type = 1;
      m.run = self->Copy(*run);
      self->runs_.push_back(m.run);
    }
    self->progress_->Send(&m, 1);
  }

  std::shared_ptr<RunCopy> Copy(const kf_run& r) {
    auto c = std::make_shared<RunCopy>();
    c->head = r;
    c->head.vm_delta = c->head.vcpu_delta = nullptr;
    size_t nvm = (size_t)opts_.vms * info_.vm_names.size();
    size_t nvcpu = (size_t)opts_.vms * opts_.vcpus * info_.vcpu_names.size();
    c->vm.assign(r.vm_delta, r.vm_delta + nvm);
    c->vcpu.assign(r.vcpu_delta, r.vcpu_delta + nvcpu);
    return c;
  }

  void CopyInfo(kf_workload* w) {
    info_.host = kf_host_name(kf_workload_host(w));
    info_.detail = kf_workload_host_detail(w);
    for (uint32_t i = 0; i < opts_.vms; i++) {
      std::vector<double> t;
      for (uint32_t j = 0; j < opts_.vcpus; j++) t.push_back(kf_workload_vcpu_tid(w, i, j));
      info_.tids.push_back(std::move(t));
      info_.region_hva.push_back((double)kf_workload_vm_region_hva(w, i));
    }
    for (int k = 0; k < 2; k++)
      for (uint32_t i = 0; i < kf_workload_n_stats(w, k); i++)
        (k ? info_.vcpu_names : info_.vm_names).push_back(kf_workload_stat_name(w, k, i));
    info_.slots_per_run = (double)kf_workload_slots_per_run(w);
    info_.guest_memory = (double)kf_workload_guest_memory(w);
    have_info_ = true;
  }


  static Napi::Array Strings(Napi::Env env, const std::vector<std::string>& v) {
    Napi::Array a = Napi::Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) a.Set(i, Napi::String::New(env, v[i]));
    return a;
  }
  static Napi::Float64Array Numbers(Napi::Env env, const std::vector<double>& v) {
    Napi::Float64Array a = Napi::Float64Array::New(env, v.size());
    for (size_t i = 0; i < v.size(); i++) a[i] = v[i];
    return a;
  }

  Napi::Object InfoObject(Napi::Env env) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("host", info_.host);
    o.Set("hostDetail", info_.detail);
    Napi::Array tids = Napi::Array::New(env, info_.tids.size());
    for (size_t i = 0; i < info_.tids.size(); i++) {
      Napi::Array t = Napi::Array::New(env, info_.tids[i].size());
      for (size_t j = 0; j < info_.tids[i].size(); j++) t.Set(j, info_.tids[i][j]);
      tids.Set(i, t);
    }
    o.Set("tids", tids);
    o.Set("vmStatNames", Strings(env, info_.vm_names));
    o.Set("vcpuStatNames", Strings(env, info_.vcpu_names));
    Napi::Array hva = Napi::Array::New(env, info_.region_hva.size());
    for (size_t i = 0; i < info_.region_hva.size(); i++) hva.Set(i, info_.region_hva[i]);
    o.Set("regionHva", hva);
    o.Set("regionGpa", (double)KF_REGION_GPA);
    o.Set("guestStoreRip", (double)KF_GUEST_STORE_RIP);
    o.Set("slotsPerRun", info_.slots_per_run);
    o.Set("guestMemoryBytes", info_.guest_memory);
    return o;
  }

  static Napi::Object RunObject(Napi::Env env, const RunCopy& r) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", r.head.index);
    o.Set("startS", r.head.start_s);
    o.Set("durationS", r.head.duration_s);
    o.Set("passes", r.head.passes);
    o.Set("truncated", Napi::Boolean::New(env, r.head.truncated != 0));
    o.Set("touches", (double)r.head.touches);
    o.Set("slotsTouched", (double)r.head.slots_touched);
    o.Set("slotsVerified", (double)r.head.slots_verified);
    o.Set("slotsLost", (double)r.head.slots_lost);
    o.Set("invalidations", (double)r.head.invalidations);
    o.Set("efaultRetries", (double)r.head.efault_retries);
    o.Set("burst", (double)r.head.burst);
    o.Set("heapBurst", (double)r.head.heap_burst);
    o.Set("burstS", r.head.burst_s);
    o.Set("heapBurstS", r.head.heap_burst_s);
    o.Set("vm", Numbers(env, r.vm));
    o.Set("vcpu", Numbers(env, r.vcpu));
    return o;
  }

  Napi::Object Result(Napi::Env env) {
    Napi::Object o = InfoObject(env);
    Napi::Array runs = Napi::Array::New(env, runs_.size());
    for (size_t i = 0; i < runs_.size(); i++) runs.Set(i, RunObject(env, *runs_[i]));
    o.Set("runs", runs);
    return o;
  }

  Napi::Promise::Deferred deferred_;
  kf_workload_opts opts_;
  std::shared_ptr<CancelFlag> cancel_;
  Napi::FunctionReference on_event_;
  Napi::Reference<Napi::Value> listener_error_;
  Napi::Env::CleanupHook<std::function<void()>> hook_;
  const ExecutionProgress* progress_ = nullptr;
  Info info_;
  bool have_info_ = false;
  std::vector<std::shared_ptr<RunCopy>> runs_;
  int rc_ = KF_OK;
  std::string message_;
};

double NumberOr(Napi::Object o, const char* key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

Napi::Value Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    Napi::TypeError::New(env, "workload.run(options, onEvent?): options must be an object")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  kf_workload_opts opts{};
  opts.pattern = (int)NumberOr(o, "pattern", KF_PATTERN_SEQUENTIAL);
  opts.size_bytes = (uint64_t)NumberOr(o, "sizeBytes", 0);
  opts.stride = (uint64_t)NumberOr(o, "stride", 4096);
  opts.runs = (uint32_t)NumberOr(o, "runs", 1);
  opts.duration_s = NumberOr(o, "durationS", 0);
  opts.rate = (uint64_t)NumberOr(o, "rate", 0);
  opts.vcpus = (uint32_t)NumberOr(o, "vcpus", 1);
  opts.vms = (uint32_t)NumberOr(o, "vms", 1);
  opts.touches = (uint64_t)NumberOr(o, "touches", 0);
  opts.hot_slots = (uint32_t)NumberOr(o, "hotSlots", 0);
  opts.seed = (uint64_t)NumberOr(o, "seed", 1);
  opts.invalidate = (int)NumberOr(o, "invalidate", KF_INVAL_NONE);
  opts.invalidate_method = (int)NumberOr(o, "invalidateMethod", KF_INVAL_DONTNEED);
  opts.invalidate_interval_us = (uint32_t)NumberOr(o, "invalidateIntervalUs", 0);
  opts.host = (int)NumberOr(o, "host", KF_HOST_UNKNOWN);
  opts.burst = (uint64_t)NumberOr(o, "burst", 0);
  opts.heap_burst = (uint64_t)NumberOr(o, "heapBurst", 0);
  opts.mergeable = o.Get("mergeable").ToBoolean();

  Napi::Function on_event;
  if (info.Length() > 1 && info[1].IsFunction()) on_event = info[1].As<Napi::Function>();
  auto cancel = std::make_shared<CancelFlag>();
  opts.burst_done = &cancel->burst_done;  // lives as long as the worker's and the handle's refs
  auto* worker = new WorkloadWorker(env, opts, on_event, cancel);
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("promise", worker->Promise());
  handle.Set("cancel", Napi::Function::New(env, [cancel](const Napi::CallbackInfo& ci) {
               cancel->value = 1;
               return ci.Env().Undefined();
             }, "cancel"));
  // burst progress (calls done), readable while the workload runs
  handle.Set("burstDone", Napi::Function::New(env, [cancel](const Napi::CallbackInfo& ci) {
               return Napi::Number::New(ci.Env(), (double)__atomic_load_n(&cancel->burst_done, __ATOMIC_RELAXED));
             }, "burstDone"));
  worker->Queue();
  return handle;
}

Napi::Value DetectHost(const Napi::CallbackInfo& info) {
  char detail[256];
  kf_host h = kf_detect_host(detail, sizeof(detail));
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("host", kf_host_name(h));
  o.Set("detail", detail);
  return o;
}

Napi::Object InitWorkload(Napi::Env env, Napi::Object exports) {
  Napi::Object w = Napi::Object::New(env);
  w.Set("run", Napi::Function::New(env, Run, "run"));
  w.Set("detectHost", Napi::Function::New(env, DetectHost, "detectHost"));
  Napi::Object c = Napi::Object::New(env);
#define C(name) c.Set(#name, Napi::Number::New(env, KF_##name))
  C(PATTERN_SEQUENTIAL); C(PATTERN_RANDOM); C(PATTERN_HOT);
  C(INVAL_NONE); C(INVAL_BETWEEN); C(INVAL_CONCURRENT);
  C(INVAL_DONTNEED); C(INVAL_REMAP); C(INVAL_MPROTECT);
  C(HOST_UNKNOWN); C(HOST_PVM); C(HOST_VMX); C(HOST_SVM);
  C(MAX_VCPUS); C(MAX_VMS);
#undef C
  w.Set("constants", c);
  exports.Set("workload", w);
  return exports;
}

}  // namespace

KVMFAULT_REGISTER(workload, InitWorkload);
