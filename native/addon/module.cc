// module.cc - the addon's entry point: runs every registered init (see module.h).
#include "module.h"

#include <vector>

namespace kvmfault {
namespace {
struct Entry {
  const char* name;
  InitFn fn;
};
std::vector<Entry>& Registry() {
  static std::vector<Entry> entries;  // function-local: safe against static init order
  return entries;
}
}  // namespace

Registrar::Registrar(const char* name, InitFn fn) { Registry().push_back({name, fn}); }

void ThrowErrno(Napi::Env env, const std::string& what, int err, const std::string& hint) {
  std::string msg = what + ": " + strerror(err < 0 ? -err : err);
  if (!hint.empty()) msg += " (" + hint + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err < 0 ? -err : err));
  e.Set("syscall", Napi::String::New(env, what));
  e.ThrowAsJavaScriptException();
}

}  // namespace kvmfault

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (auto& e : kvmfault::Registry()) {
    exports = e.fn(env, exports);
    if (env.IsExceptionPending()) break;
  }
  return exports;
}
NODE_API_MODULE(kvmfault, Init)
