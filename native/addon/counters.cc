// counters.cc - KVM's per-vCPU statistics for every VM on the host through the task_file
// iterator in native/bpf/kvmcounters.bpf.c, exported as `native().KvmCounters` and the record
// layout as `native().counters`.
//
//   new KvmCounters([key])  loads and attaches the iterators (throws Error with .code: EPERM,
//                      NO_KVM, LOAD_FAILED, ATTACH_FAILED); key: a BigInt vm_id key (the tracer's,
//                      so both hash a VM to the same id), else a random one
//   sample()           -> Buffer of struct kvmfault_vcpu_counters, one per vCPU fd on the host
//                         (runs the iterator once: the only time any of this costs CPU)
//   memslots()         -> Buffer of struct kvmfault_memslot (every VM's memslots), or null when
//                         the memslot iterator did not load on this kernel (memslotsError() says why)
//   close()            idempotent; detaches and frees the programs
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <ctime>
#include <string>
#include <vector>

#include "events.h"
#include "kvmcounters.skel.h"
#include "module.h"

namespace {

Napi::Value ThrowCode(Napi::Env env, const char* code, int err, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  if (err) e.Set("errno", Napi::Number::New(env, err < 0 ? -err : err));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

class KvmCounters : public Napi::ObjectWrap<KvmCounters> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmCounters", {
        InstanceMethod("sample", &KvmCounters::Sample),
        InstanceMethod("memslots", &KvmCounters::Memslots),
        InstanceMethod("memslotsError", &KvmCounters::MemslotsError),
        InstanceMethod("close", &KvmCounters::Close),
    });
  }

  KvmCounters(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmCounters>(info) {
    Napi::Env env = info.Env();
    std::string denied = kvmfault::MissingBpfCapabilities();
    if (!denied.empty()) {
      ThrowCode(env, "EPERM", EPERM, denied);
      return;
    }
    uint64_t key = 0;
    bool lossless = true;
    if (info.Length() > 0 && info[0].IsBigInt()) {
      key = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
    } else if (getrandom(&key, sizeof key, 0) != sizeof key) {
      key = (uint64_t)time(nullptr) * 0x9e3779b97f4a7c15ULL;
    }
    if (!lossless) {
      ThrowCode(env, "EINVAL", EINVAL, "KvmCounters: the key must be a BigInt from 0 to 2^64-1");
      return;
    }
    // With the memslot iterator first; without it if that alone keeps the object from loading
    // (a kernel whose struct kvm_memslots neither shape fits): the counters still work.
    int err = Open(key, true);
    if (err && err != EPERM && err != EACCES) {
      memslotsError_ = std::string("the memslot iterator did not load: ") + strerror(err);
      err = Open(key, false);
    }
    if (err == -1) {
      ThrowCode(env, "LOAD_FAILED", errno, std::string("cannot open the counters BPF object: ") + strerror(errno));
      return;
    }
    if (err) {
      Destroy();
      err = err < 0 ? -err : err;
      // CO-RE cannot find struct kvm_vcpu when KVM is not loaded: libbpf reports ESRCH/ENOENT
      if (err == ESRCH || err == ENOENT)
        ThrowCode(env, "NO_KVM", err, "KVM's types are not in this kernel's BTF (is the kvm module loaded? modprobe kvm_intel or kvm_amd)");
      else
        ThrowCode(env, err == EPERM || err == EACCES ? "EPERM" : "LOAD_FAILED", err,
                  std::string("the counters iterator failed to load: ") + strerror(err) +
                      " (needs kernel 5.8+ with BPF iterators and BTF; KVMFAULT_DEBUG=1 shows libbpf's log)");
      return;
    }
    link_ = bpf_program__attach_iter(skel_->progs.kvm_vcpu_counters, nullptr);
    if (!link_) {
      int e = errno;
      Destroy();
      ThrowCode(env, "ATTACH_FAILED", e, std::string("cannot attach the task_file iterator: ") + strerror(e));
      return;
    }
    if (memslotsError_.empty()) {
      memslotsLink_ = bpf_program__attach_iter(skel_->progs.kvm_vm_memslots, nullptr);
      if (!memslotsLink_) memslotsError_ = std::string("cannot attach the memslot iterator: ") + strerror(errno);
    }
    exitHook_.Arm(env, [](void* self) { static_cast<KvmCounters*>(self)->Destroy(); }, this);
  }

  ~KvmCounters() override { Destroy(); }

 private:
  // Opens and loads the object (memslots: with the memslot iterator); 0, an errno, or -1 when
  // the object cannot even be opened.
  int Open(uint64_t key, bool memslots) {
    if (skel_) kvmcounters_bpf__destroy(skel_);
    skel_ = kvmcounters_bpf__open();
    if (!skel_) return -1;
    skel_->rodata->vm_id_key = key;
    bpf_program__set_autoload(skel_->progs.kvm_vm_memslots, memslots);
    int err = kvmcounters_bpf__load(skel_);
    return err < 0 ? -err : err;
  }

  Napi::Value Memslots(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!link_) return ThrowCode(env, "ECLOSED", EBADF, "KvmCounters is closed");
    if (!memslotsLink_) return env.Null();
    int err = ReadSnapshot(memslotsLink_);
    if (err) return ThrowCode(env, "EITER", err, std::string("reading the memslot iterator failed: ") + strerror(err));
    return Napi::Buffer<char>::Copy(env, buf_.data(), buf_.size());
  }

  Napi::Value MemslotsError(const Napi::CallbackInfo& info) {
    if (memslotsLink_ || memslotsError_.empty()) return info.Env().Null();
    return Napi::String::New(info.Env(), memslotsError_);
  }

  Napi::Value Sample(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!link_) return ThrowCode(env, "ECLOSED", EBADF, "KvmCounters is closed");
    int err = ReadSnapshot(link_);
    if (err) return ThrowCode(env, "EITER", err, std::string("reading the counters iterator failed: ") + strerror(err));
    return Napi::Buffer<char>::Copy(env, buf_.data(), buf_.size());
  }

  // A read can fail with EAGAIN when the walk raced a task or file going away: run the
  // iterator again from the start (a sample is a snapshot, never half of one).
  int ReadSnapshot(bpf_link* link) {
    int err = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
      err = ReadIterator(link);
      if (err != EAGAIN) break;
    }
    return err;
  }

  // Runs an iterator once into buf_; 0 or an errno.
  int ReadIterator(bpf_link* link) {
    buf_.clear();
    int fd = bpf_iter_create(bpf_link__fd(link));
    if (fd < 0) return errno;
    char chunk[1 << 14];
    for (;;) {
      ssize_t n = read(fd, chunk, sizeof chunk);
      if (n > 0) {
        buf_.insert(buf_.end(), chunk, chunk + n);
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        int e = errno;
        close(fd);
        return e;
      }
    }
    close(fd);
    return 0;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Destroy();
    return info.Env().Undefined();
  }

  void Destroy() {
    exitHook_.Disarm();
    if (memslotsLink_) bpf_link__destroy(memslotsLink_);
    memslotsLink_ = nullptr;
    if (link_) bpf_link__destroy(link_);
    link_ = nullptr;
    if (skel_) kvmcounters_bpf__destroy(skel_);
    skel_ = nullptr;
  }

  kvmcounters_bpf* skel_ = nullptr;
  bpf_link* link_ = nullptr;
  bpf_link* memslotsLink_ = nullptr;
  std::string memslotsError_;
  std::vector<char> buf_;
  kvmfault::EnvExitHook exitHook_;
};

Napi::Object InitCounters(Napi::Env env, Napi::Object exports) {
  exports.Set("KvmCounters", KvmCounters::Define(env));
  Napi::Object off = Napi::Object::New(env);
#define F(name) off.Set(#name, Napi::Number::New(env, offsetof(struct kvmfault_vcpu_counters, name)))
  F(pid); F(fd); F(vcpu_id); F(tid); F(vm_id); F(mmu_seq); F(in_progress); F(stat);
#undef F
  Napi::Object stats = Napi::Object::New(env);
#define S(name) stats.Set(#name, Napi::Number::New(env, KF_STAT_##name))
  S(PF_TAKEN); S(PF_FIXED); S(PF_EMULATE); S(PF_SPURIOUS); S(PF_FAST); S(PF_MMIO_SPTE_CREATED);
  S(PF_GUEST); S(EXITS); S(IO_EXITS); S(MMIO_EXITS); S(HALT_EXITS); S(INSN_EMULATION);
#undef S
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("size", Napi::Number::New(env, sizeof(struct kvmfault_vcpu_counters)));
  layout.Set("offsets", off);
  layout.Set("stats", stats);
  layout.Set("statCount", Napi::Number::New(env, KF_STAT_COUNT));
  exports.Set("counters", layout);
  Napi::Object slotOff = Napi::Object::New(env);
#define M(name) slotOff.Set(#name, Napi::Number::New(env, offsetof(struct kvmfault_memslot, name)))
  M(pid); M(fd); M(vm_id); M(userspace_addr); M(npages); M(base_gfn); M(as_id); M(slot_id); M(flags);
#undef M
  Napi::Object slotFlags = Napi::Object::New(env);
  slotFlags.Set("SUMMARY", Napi::Number::New(env, KF_MEMSLOT_SUMMARY));
  slotFlags.Set("TRUNCATED", Napi::Number::New(env, KF_MEMSLOT_TRUNCATED));
  slotFlags.Set("NO_SHAPE", Napi::Number::New(env, KF_MEMSLOT_NO_SHAPE));
  Napi::Object slots = Napi::Object::New(env);
  slots.Set("size", Napi::Number::New(env, sizeof(struct kvmfault_memslot)));
  slots.Set("offsets", slotOff);
  slots.Set("flags", slotFlags);
  slots.Set("maxPerAddressSpace", Napi::Number::New(env, KF_MEMSLOTS_MAX));
  slots.Set("chain", Napi::Number::New(env, KF_MEMSLOT_CHAIN));
  exports.Set("memslots", slots);
  return exports;
}

}  // namespace

KVMFAULT_REGISTER(counters, InitCounters);
