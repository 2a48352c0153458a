// module.cc - the addon's entry point: runs every registered init (see module.h).
#include "module.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
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

// Why this process may not load and attach tracing programs, or "" when it may. The kernel asks
// for capabilities, not uid 0: CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN, which implies both for
// BPF). Root with those dropped (a container, a hardened unit) is refused; a non-root service
// granted them is not. Read from CapEff so the message can name what is missing.
std::string MissingBpfCapabilities() {
  std::ifstream status("/proc/self/status");
  std::string line;
  unsigned long long capEff = 0;
  bool found = false;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      capEff = std::strtoull(line.c_str() + 7, nullptr, 16);
      found = true;
      break;
    }
  }
  if (!found) return geteuid() == 0 ? "" : "cannot read CapEff from /proc/self/status and not root";
  constexpr int kCapSysAdmin = 21, kCapPerfmon = 38, kCapBpf = 39;
  auto has = [&](int bit) { return ((capEff >> bit) & 1ULL) != 0; };
  if (has(kCapSysAdmin) || (has(kCapBpf) && has(kCapPerfmon))) return "";
  std::string missing = !has(kCapBpf) && !has(kCapPerfmon) ? "CAP_BPF and CAP_PERFMON" : !has(kCapBpf) ? "CAP_BPF" : "CAP_PERFMON";
  char hex[32];
  snprintf(hex, sizeof hex, "%016llx", capEff);
  return "loading BPF tracing programs needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN); this process (euid " +
         std::to_string(geteuid()) + ", CapEff " + hex + ") lacks " + missing +
         (geteuid() == 0 ? ": it runs as root with those capabilities dropped; run it with them kept"
                         : ": run as root (e.g. with sudo) or grant them (setcap / AmbientCapabilities=)");
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
