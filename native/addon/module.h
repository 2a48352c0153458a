// module.h - how each addon source file registers its exports.
//
// Every native/addon/*.cc that exports something declares
//   KVMFAULT_REGISTER(ring, InitRing);
// with `Napi::Object InitRing(Napi::Env, Napi::Object exports)`. module.cc calls every
// registered init at load, so adding a file never means editing a shared list.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstring>
#include <string>

namespace kvmfault {

using InitFn = Napi::Object (*)(Napi::Env, Napi::Object);

struct Registrar {
  Registrar(const char* name, InitFn fn);
};

// Throws a JS Error with .errno/.code set, message "<what>: <strerror> <hint>".
// The hint says what to do (e.g. "run as root").
void ThrowErrno(Napi::Env env, const std::string& what, int err, const std::string& hint = "");

// Why this process may not load BPF tracing programs (names the missing capabilities and what
// to do), or "" when it may: CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN; not the uid.
std::string MissingBpfCapabilities();

// Runs an object's release when the Node environment exits (process or worker), so no BPF link,
// fd or mapping outlives it. The owner calls Disarm() when it released itself first; a hook
// being run is not removed again. Owned by a heap object (an ObjectWrap): its address is the key.
class EnvExitHook {
 public:
  using ReleaseFn = void (*)(void* owner);
  EnvExitHook() = default;
  EnvExitHook(const EnvExitHook&) = delete;
  EnvExitHook& operator=(const EnvExitHook&) = delete;
  ~EnvExitHook() { Disarm(); }

  void Arm(napi_env env, ReleaseFn release, void* owner) {
    if (armed_) return;
    env_ = env;
    release_ = release;
    owner_ = owner;
    napi_add_env_cleanup_hook(env, &EnvExitHook::Run, this);
    armed_ = true;
  }
  void Disarm() {
    if (!armed_) return;
    armed_ = false;
    napi_remove_env_cleanup_hook(env_, &EnvExitHook::Run, this);
  }

 private:
  static void Run(void* arg) {
    auto* self = static_cast<EnvExitHook*>(arg);
    self->armed_ = false;  // being run: not to be removed again
    self->release_(self->owner_);
  }
  napi_env env_ = nullptr;
  ReleaseFn release_ = nullptr;
  void* owner_ = nullptr;
  bool armed_ = false;
};

}  // namespace kvmfault

#define KVMFAULT_REGISTER(name, fn) \
  static ::kvmfault::Registrar kvmfault_registrar_##name(#name, fn)
