// tracer.cc - native().Tracer: opens, loads and attaches native/bpf/kvmfault.bpf.c for ONE attach
// mode, and reports per probe what attached and why not. lib/tracer.ts drives it (option
// validation, `auto` = fentry -> kprobe -> tracepoint, typed errors); this file stays thin:
//
//   const t = new Tracer();
//   t.open({ mode, pid, ringBytes, coalesce, wakeupBytes, exits, rawTracepoints, invalidationStacks, verbose })
//       -> { retPf: {RET_PF_RETRY: 1, ...}, rangeIsGfn, btf, probes: [planned status] }
//   t.load()            verifier + CO-RE against the running kernel
//   t.attach()          -> [{ name, point, attached, reason? }]
//   t.ringFd(), t.stats(), t.close()   (close is idempotent; an env cleanup hook also closes)
//
// Errors carry .code (kvmfault's: EPERM, NO_BTF, NO_KVM, MODE_UNAVAILABLE, LOAD_FAILED, ...),
// .errno where a syscall failed, a remedy in the message, and .probes (the plan, each probe
// with the reason it is not attached) when a whole mode fails.
#include "module.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "kvmfault.skel.h"
#include "events.h"

namespace kvmfault {
namespace {

// ---- libbpf output: hidden unless verbose, kept for error messages ---------------------------
// libbpf's print callback is process-wide, but it runs on the thread that called into libbpf:
// per-thread routing keeps two tracers opened at once from two worker threads apart.
thread_local std::string* g_collect = nullptr;  // the log of the tracer calling into libbpf on this thread
thread_local bool g_verbose = false;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list ap) {
  // libbpf 1.1 prints a whole verifier log as ONE message: format it in full, since the
  // verifier's verdict is its last line.
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(nullptr, 0, fmt, ap2);
  va_end(ap2);
  if (n <= 0) return 0;
  std::string msg(static_cast<size_t>(n) + 1, '\0');
  vsnprintf(&msg[0], msg.size(), fmt, ap);
  msg.resize(static_cast<size_t>(n));
  if (g_verbose) fputs(msg.c_str(), stderr);
  if (g_collect && level != LIBBPF_DEBUG) {
    g_collect->append(msg);
    // bounded: keep the end, where the error is
    constexpr size_t kKeep = 64u << 10;
    if (g_collect->size() > 2 * kKeep) g_collect->erase(0, g_collect->size() - kKeep);
  }
  return 0;
}

struct CollectScope {  // routes libbpf messages into one tracer's log for one call
  CollectScope(std::string* log, bool verbose) {
    g_collect = log;
    g_verbose = verbose;
  }
  ~CollectScope() {
    g_collect = nullptr;
    g_verbose = false;
  }
};

bool Exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

// The last `n` lines of libbpf's log: the verifier's or CO-RE's complaint is at the end.
std::string Tail(const std::string& log, int n) {
  size_t pos = log.size();
  for (int i = 0; i <= n && pos != std::string::npos && pos > 0; i++) pos = log.rfind('\n', pos - 1);
  std::string t = pos == std::string::npos ? log : log.substr(pos + 1);
  while (!t.empty() && t.back() == '\n') t.pop_back();
  return t;
}

// libbpf 1.1 blames RLIMIT_MEMLOCK for any EPERM as root; this kernel charges BPF memory to the
// memcg, so that hint misleads (the real cause is policy, e.g. fentry not permitted).
std::string WithoutMemlockHint(const std::string& log) {
  std::string out, line;
  size_t start = 0;
  while (start < log.size()) {
    size_t nl = log.find('\n', start);
    line = log.substr(start, nl == std::string::npos ? std::string::npos : nl - start + 1);
    if (line.find("ulimit -l") == std::string::npos) out += line;
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

enum class Mode { kTracepoint, kKprobe, kFentry };
enum class Attach { kTpBtf, kRawTp, kKprobe, kKretprobe, kFentry, kFexit };

// One program of the object and what it should attach to.
struct Planned {
  std::string prog;     // program name in kvmfault.bpf.c
  std::string point;    // "tp_btf:kvmmmu:kvm_mmu_spte_requested", "kprobe:kvm_mmu_faultin_pfn"
  Attach how;
  std::string target;   // tracepoint name or kernel function
  std::string reason;   // non-empty: will not be loaded/attached, and why
  bool attached = false;
};

struct KernelFacts {
  std::map<std::string, long long> retPf;
  bool rangeIsGfn = false;
  bool haveKvm = false;
  // struct kvm_vcpu is vmlinux's own (KVM built in, not a module) and vmlinux has the
  // bpf_rdonly_cast kfunc: the typed programs may read a cached vCPU / VM with plain loads
  bool kvmTypedCast = false;
  std::string btfSources;
  std::set<std::string> btfTypedefs;  // btf_trace_<tp> present
  std::set<std::string> btfFuncs;     // FUNC names with "page_fault" or "faultin_pfn" in them
  // is_page_fault_stale's prototype, the kernel's own word on the incident's bug: 3 parameters
  // with a signed 32-bit mmu_seq = affected (v5.16..v6.2 signature); 2, or an unsigned long
  // mmu_seq (6.1.50's stable fix) = fixed. Absent when the function is inlined or renamed.
  struct Param {
    std::string name, type;  // type: the resolved base type ("int", "unsigned long", "pointer")
    bool isSigned = false;
    unsigned size = 0;
  };
  bool staleCheckFound = false;
  std::string staleCheckIn;  // which BTF had it: "vmlinux" or "kvm"
  std::vector<Param> staleCheckParams;
};

// The probe catalogue (lib/probes.ts) as open() receives it: the functions and tracepoints of
// each mode, and the kallsyms symbol the tracer resolved for each function found (a compiler
// may have renamed it: direct_page_fault.isra.0).
struct CatalogueTp {
  std::string program, system, name;  // program suffix (tb_/rt_<program>), tracepoint
  bool faultEntry = false;            // a FAULT source: tracepoint mode only
};
struct CatalogueFentry {
  std::string entry, exit;
  std::vector<std::string> candidates;
};
struct Catalogue {
  std::vector<std::string> faultin, handlers;
  std::string fallback;
  // INVALIDATE_START in kprobe / fentry mode: it has the struct kvm and the range's reason code,
  // the kvm_unmap_hva_range tracepoint has neither (which stays where this cannot be probed)
  std::string notifier;
  std::vector<CatalogueFentry> fentry;
  std::vector<CatalogueTp> tracepoints;
  std::map<std::string, std::string> symbols;  // function -> kallsyms symbol
  bool IsFaultEntryTp(const std::string& program) const {
    for (auto& t : tracepoints)
      if (t.program == program) return t.faultEntry;
    return false;
  }
};

// open()'s options come from lib/tracer.ts, but the addon is also reachable directly
// (native().Tracer): a field of the wrong type must be a TypeError, never a fatal abort of the
// process (Napi's String conversion of a non-string aborts with C++ exceptions off). Each reader
// records the first bad field in *bad and returns an empty value.
std::string Str(Napi::Object o, const char* key, const std::string& where, std::string* bad) {
  Napi::Value v = o.Get(key);
  if (v.IsString()) return v.As<Napi::String>();
  if (bad->empty()) *bad = where + "." + key + " must be a string";
  return {};
}

std::vector<std::string> StringList(Napi::Object o, const char* key, const std::string& where, std::string* bad) {
  std::vector<std::string> out;
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return out;
  if (!v.IsArray()) {
    if (bad->empty()) *bad = where + "." + key + " must be an array of strings";
    return out;
  }
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsString()) {
      if (bad->empty()) *bad = where + "." + key + "[" + std::to_string(i) + "] must be a string";
      return out;
    }
    out.push_back(e.As<Napi::String>());
  }
  return out;
}

// Each element of o[key] that is an object, or *bad set.
std::vector<Napi::Object> Objects(Napi::Object o, const char* key, const std::string& where, std::string* bad) {
  std::vector<Napi::Object> out;
  Napi::Value v = o.Get(key);
  if (!v.IsArray()) {
    if (bad->empty()) *bad = where + "." + key + " must be an array";
    return out;
  }
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsObject()) {
      if (bad->empty()) *bad = where + "." + key + "[" + std::to_string(i) + "] must be an object";
      return {};
    }
    out.push_back(e.As<Napi::Object>());
  }
  return out;
}

// The catalogue, or *bad says which field is missing or of the wrong type.
Catalogue ReadCatalogue(Napi::Value v, std::string* bad) {
  Catalogue c;
  const std::string where = "options.probes";
  if (!v.IsObject()) {
    *bad = where + " must be the probe catalogue object (lib/tracer.ts builds it from lib/probes.ts)";
    return c;
  }
  Napi::Object o = v.As<Napi::Object>();
  c.faultin = StringList(o, "faultin", where, bad);
  c.handlers = StringList(o, "handlers", where, bad);
  c.fallback = Str(o, "fallback", where, bad);
  c.notifier = Str(o, "notifier", where, bad);
  for (Napi::Object e : Objects(o, "fentry", where, bad)) {
    const std::string w = where + ".fentry[]";
    c.fentry.push_back({Str(e, "entry", w, bad), Str(e, "exit", w, bad), StringList(e, "candidates", w, bad)});
  }
  for (Napi::Object t : Objects(o, "tracepoints", where, bad)) {
    const std::string w = where + ".tracepoints[]";
    c.tracepoints.push_back({Str(t, "program", w, bad), Str(t, "system", w, bad), Str(t, "name", w, bad),
                             t.Get("faultEntry").ToBoolean()});
  }
  Napi::Value symsValue = o.Get("symbols");
  if (!symsValue.IsObject()) {
    if (bad->empty()) *bad = where + ".symbols must be an object (function -> kallsyms symbol)";
    return c;
  }
  Napi::Object syms = symsValue.As<Napi::Object>();
  Napi::Array keys = syms.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); i++) {
    std::string k = keys.Get(i).ToString();
    c.symbols[k] = Str(syms, k.c_str(), where + ".symbols", bad);
  }
  return c;
}

// Parameters of is_page_fault_stale's FUNC_PROTO, each type resolved through typedefs and
// modifiers (split module BTF resolves ids of its vmlinux base too).
void ScanStaleCheck(const struct btf* btf, const struct btf_type* func, KernelFacts& f) {
  const struct btf_type* proto = btf__type_by_id(btf, func->type);
  if (!proto || !btf_is_func_proto(proto)) return;
  f.staleCheckFound = true;
  f.staleCheckParams.clear();
  const struct btf_param* p = btf_params(proto);
  for (int i = 0; i < btf_vlen(proto); i++) {
    KernelFacts::Param out;
    out.name = btf__name_by_offset(btf, p[i].name_off) ?: "";
    int id = btf__resolve_type(btf, p[i].type);
    const struct btf_type* pt = id > 0 ? btf__type_by_id(btf, id) : nullptr;
    if (!pt) out.type = "unknown";
    else if (btf_is_ptr(pt)) out.type = "pointer", out.size = 8;
    else if (btf_is_int(pt)) {
      out.type = btf__name_by_offset(btf, pt->name_off) ?: "int";
      out.isSigned = (btf_int_encoding(pt) & BTF_INT_SIGNED) != 0;
      out.size = pt->size;
    } else out.type = "other";
    f.staleCheckParams.push_back(out);
  }
}

void ScanBtf(const struct btf* btf, KernelFacts& f) {
  const __u32 n = btf__type_cnt(btf);
  for (__u32 id = 1; id < n; id++) {
    const struct btf_type* t = btf__type_by_id(btf, id);
    if (!t) continue;
    if (btf_is_enum(t)) {
      // RET_PF_*: an anonymous enum in arch/x86/kvm/mmu/mmu_internal.h
      const struct btf_enum* e = btf_enum(t);
      bool isRetPf = false;
      for (int i = 0; i < btf_vlen(t); i++)
        if (std::string(btf__name_by_offset(btf, e[i].name_off)) == "RET_PF_RETRY") isRetPf = true;
      if (isRetPf)
        for (int i = 0; i < btf_vlen(t); i++) f.retPf[btf__name_by_offset(btf, e[i].name_off)] = e[i].val;
    } else if (btf_is_typedef(t)) {
      const char* name = btf__name_by_offset(btf, t->name_off);
      if (name && strncmp(name, "btf_trace_kvm", 13) == 0) f.btfTypedefs.insert(name);
    } else if (btf_is_func(t)) {
      const char* name = btf__name_by_offset(btf, t->name_off);
      // every function the catalogue may name (test 45 checks its names all match)
      if (name && (strstr(name, "page_fault") || strstr(name, "faultin_pfn") || strstr(name, "mmu_notifier")))
        f.btfFuncs.insert(name);
      if (name && !strcmp(name, "is_page_fault_stale")) ScanStaleCheck(btf, t, f);
    } else if (btf_is_struct(t)) {
      const char* name = btf__name_by_offset(btf, t->name_off);
      if (!name) continue;
      if (!strcmp(name, "kvm_vcpu")) f.haveKvm = true;
      if (strcmp(name, "kvm")) continue;
      // kvm->mmu_invalidate_range_start: gfn_t from 8569992d64b8 (6.8), unsigned long (hva) before
      const struct btf_member* m = btf_members(t);
      for (int i = 0; i < btf_vlen(t); i++) {
        if (strcmp(btf__name_by_offset(btf, m[i].name_off), "mmu_invalidate_range_start")) continue;
        const struct btf_type* mt = btf__type_by_id(btf, m[i].type);
        f.rangeIsGfn = mt && btf_is_typedef(mt) && !strcmp(btf__name_by_offset(btf, mt->name_off), "gfn_t");
      }
    }
  }
}

// kprobes need the kprobe PMU (perf_event_open) or tracefs' kprobe_events (legacy path).
std::string KprobeUnavailableReason() {
  if (Exists("/sys/bus/event_source/devices/kprobe/type")) return "";
  if (Exists("/sys/kernel/tracing/kprobe_events") || Exists("/sys/kernel/debug/tracing/kprobe_events")) return "";
  return "kprobes not available on this kernel (CONFIG_KPROBES off: no kprobe PMU in "
         "/sys/bus/event_source/devices and /sys/kernel/tracing/kprobe_events missing)";
}

// Kernel facts from BTF: RET_PF_* values, range unit, typed tracepoints, traceable functions,
// is_page_fault_stale's prototype. Scanned once per process (~10 ms): the running kernel's BTF
// does not change, except that the kvm module may appear later, so a scan that found no KVM is
// not kept. One cache for the process, shared by tracers on any worker thread: read and filled
// under a lock, handed out as a copy (small: a few sets of names). false (with *err) when
// vmlinux BTF cannot be read.
bool ScanKernelBtf(KernelFacts* out, int* err) {
  static std::mutex lock;
  static KernelFacts cached;
  static bool haveCached = false;
  std::lock_guard<std::mutex> guard(lock);
  if (haveCached) {
    *out = cached;
    return true;
  }
  KernelFacts scanned;
  struct btf* vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) {
    *err = errno;
    return false;
  }
  ScanBtf(vmlinux, scanned);
  scanned.kvmTypedCast = scanned.haveKvm && btf__find_by_name_kind(vmlinux, "bpf_rdonly_cast", BTF_KIND_FUNC) > 0;
  if (scanned.staleCheckFound) scanned.staleCheckIn = "vmlinux";
  scanned.btfSources = "/sys/kernel/btf/vmlinux";
  if (Exists("/sys/kernel/btf/kvm")) {  // kvm built as a module: its types are split BTF
    struct btf* kvm = btf__load_module_btf("kvm", vmlinux);
    if (kvm) {
      bool before = scanned.staleCheckFound;
      scanned.staleCheckFound = false;
      ScanBtf(kvm, scanned);
      if (scanned.staleCheckFound) scanned.staleCheckIn = "kvm";
      else scanned.staleCheckFound = before;
      scanned.btfSources += " + /sys/kernel/btf/kvm";
      btf__free(kvm);
    }
  }
  btf__free(vmlinux);
  if (scanned.haveKvm) {
    cached = scanned;
    haveCached = true;
  }
  *out = std::move(scanned);
  return true;
}

Napi::Object StaleCheckObject(Napi::Env env, const KernelFacts& f) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("found", f.staleCheckFound);
  o.Set("btf", f.staleCheckIn);
  Napi::Array params = Napi::Array::New(env, f.staleCheckParams.size());
  for (size_t i = 0; i < f.staleCheckParams.size(); i++) {
    const auto& p = f.staleCheckParams[i];
    Napi::Object po = Napi::Object::New(env);
    po.Set("name", p.name);
    po.Set("type", p.type);
    po.Set("signed", p.isSigned);
    po.Set("size", p.size);
    params.Set(i, po);
  }
  o.Set("params", params);
  return o;
}

// kernelBtf() -> { btf, haveKvm, retPf, rangeIsGfn, staleCheck: { found, btf, params } }: what
// doctor and the kernel judgement read without opening a tracer. Needs read access to
// /sys/kernel/btf (world-readable on most kernels).
Napi::Value KernelBtf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int err = 0;
  KernelFacts facts;
  const KernelFacts* f = &facts;
  if (!ScanKernelBtf(&facts, &err)) {
    Napi::Error e = Napi::Error::New(env, "cannot read /sys/kernel/btf/vmlinux: " + std::string(strerror(err)));
    e.Set("code", Napi::String::New(env, "NO_BTF"));
    e.Set("errno", Napi::Number::New(env, err));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("btf", f->btfSources);
  out.Set("haveKvm", f->haveKvm);
  Napi::Object retPf = Napi::Object::New(env);
  for (auto& kv : f->retPf) retPf.Set(kv.first, Napi::Number::New(env, (double)kv.second));
  out.Set("retPf", retPf);
  out.Set("rangeIsGfn", f->rangeIsGfn);
  out.Set("staleCheck", StaleCheckObject(env, *f));
  return out;
}

class Tracer : public Napi::ObjectWrap<Tracer> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tracer",
                       {
                           InstanceMethod<&Tracer::Open>("open"),
                           InstanceMethod<&Tracer::Load>("load"),
                           InstanceMethod<&Tracer::AttachAll>("attach"),
                           InstanceMethod<&Tracer::RingFd>("ringFd"),
                           InstanceMethod<&Tracer::Stats>("stats"),
                           InstanceMethod<&Tracer::Stack>("stack"),
                           InstanceMethod<&Tracer::Close>("close"),
                       });
  }

  explicit Tracer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tracer>(info) {}
  ~Tracer() override { Destroy(); }

 private:
  kvmfault_bpf* skel_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<Planned> plan_;
  std::string log_;
  bool verbose_ = false;
  bool loaded_ = false;
  kvmfault::EnvExitHook exitHook_;
  Mode mode_ = Mode::kTracepoint;

  // Detach everything and free the object. Safe to call any number of times.
  void Destroy() {
    for (bpf_link* l : links_) bpf_link__destroy(l);
    links_.clear();
    if (skel_) kvmfault_bpf__destroy(skel_);
    skel_ = nullptr;
    loaded_ = false;
    exitHook_.Disarm();
  }

  Napi::Value Throw(Napi::Env env, const char* code, int err, const std::string& msg, bool withPlan = false) {
    Napi::Error e = Napi::Error::New(env, msg);
    e.Set("code", Napi::String::New(env, code));
    if (err) e.Set("errno", Napi::Number::New(env, err < 0 ? -err : err));
    if (withPlan) e.Set("probes", PlanArray(env));
    if (!log_.empty()) e.Set("libbpfLog", Napi::String::New(env, log_));
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Array PlanArray(Napi::Env env) {
    Napi::Array a = Napi::Array::New(env, plan_.size());
    for (size_t i = 0; i < plan_.size(); i++) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", plan_[i].prog);
      o.Set("point", plan_[i].point);
      o.Set("attached", plan_[i].attached);
      if (!plan_[i].reason.empty()) o.Set("reason", plan_[i].reason);
      a.Set(i, o);
    }
    return a;
  }

  struct bpf_program* Prog(const std::string& name) {
    return skel_ ? bpf_object__find_program_by_name(skel_->obj, name.c_str()) : nullptr;
  }

  // Which programs this mode loads, with a reason for each one it cannot use.
  bool IsPlanned(const std::string& prog) const {
    for (auto& p : plan_)
      if (p.prog == prog && p.reason.empty()) return true;
    return false;
  }

  void PlanTracepoints(const KernelFacts& f, const Catalogue& cat, bool raw, bool faultEntry) {
    for (auto& tp : cat.tracepoints) {
      const std::string &suffix = tp.program, &sys = tp.system, &name = tp.name;
      if (tp.faultEntry && !faultEntry) continue;
      if (suffix == "unmap_hva_range" && (IsPlanned("kp_notifier_start") || IsPlanned("fe_notifier_start"))) continue;
      bool typed = f.btfTypedefs.count("btf_trace_" + name) > 0;
      std::string eventsDir = "/sys/kernel/tracing/events/" + sys + "/" + name;
      bool tracefsKnows = Exists("/sys/kernel/tracing/events/kvm") ? Exists(eventsDir.c_str()) : true;
      Planned p;
      if (typed && !raw) {
        p = {"tb_" + suffix, "tp_btf:" + sys + ":" + name, Attach::kTpBtf, name, ""};
      } else {
        p = {"rt_" + suffix, "raw_tp:" + sys + ":" + name, Attach::kRawTp, name, ""};
        if (!typed && !tracefsKnows) p.reason = "tracepoint " + sys + ":" + name + " not in this kernel";
      }
      plan_.push_back(p);
    }
  }

  void PlanKprobes(const Catalogue& cat) {
    const std::map<std::string, std::string>& syms = cat.symbols;
    bool faultin = false;
    for (const std::string& c : cat.faultin) {
      if (faultin) break;
      auto it = syms.find(c);
      if (it == syms.end()) continue;
      plan_.push_back({"kp_faultin", std::string("kprobe:") + it->second, Attach::kKprobe, it->second, ""});
      plan_.push_back({"kr_faultin", std::string("kretprobe:") + it->second, Attach::kKretprobe, it->second, ""});
      faultin = true;
    }
    if (!faultin) {
      std::string names, alts;
      for (const std::string& c : cat.faultin) {
        names += (names.empty() ? "" : ", ") + c;
        alts += (alts.empty() ? "" : "|") + c;
      }
      plan_.push_back({"kp_faultin", "kprobe:" + alts, Attach::kKprobe, "",
                       "no fault-in function in /proc/kallsyms (" + names + ": inlined or renamed on this kernel)"});
    }
    bool handler = false;
    for (const std::string& c : cat.handlers) {
      auto it = syms.find(c);
      if (it == syms.end()) {
        plan_.push_back({"kp_fault", "kprobe:" + c, Attach::kKprobe, c,
                         "symbol " + c + " not in /proc/kallsyms (inlined or not in this kernel)"});
        continue;
      }
      plan_.push_back({"kp_fault", "kprobe:" + it->second, Attach::kKprobe, it->second, ""});
      plan_.push_back({"kr_fault", "kretprobe:" + it->second, Attach::kKretprobe, it->second, ""});
      handler = true;
    }
    auto ns = syms.find(cat.notifier);
    if (ns != syms.end())
      plan_.push_back({"kp_notifier_start", "kprobe:" + ns->second, Attach::kKprobe, ns->second, ""});
    else
      plan_.push_back({"kp_notifier_start", "kprobe:" + cat.notifier, Attach::kKprobe, cat.notifier,
                       "not in /proc/kallsyms: INVALIDATE_START from the kvm_unmap_hva_range tracepoint"});
    auto mpf = syms.find(cat.fallback);
    if (!handler && mpf != syms.end()) {
      plan_.push_back({"kp_mmu_page_fault", "kprobe:" + mpf->second, Attach::kKprobe, mpf->second, ""});
      plan_.push_back({"kr_mmu_page_fault", "kretprobe:" + mpf->second, Attach::kKretprobe, mpf->second, ""});
    } else {
      plan_.push_back({"kp_mmu_page_fault", "kprobe:" + cat.fallback, Attach::kKprobe, cat.fallback,
                       handler ? "not needed: a fault handler symbol was found (fallback only)"
                               : "symbol " + cat.fallback + " not in /proc/kallsyms"});
    }
  }

  void PlanFentry(const KernelFacts& f, const Catalogue& cat) {
    const std::map<std::string, std::string>& syms = cat.symbols;
    auto add = [&](const std::string& entry, const std::string& exit, const std::vector<std::string>& candidates) {
      std::string why;
      for (const std::string& c : candidates) {
        if (!f.btfFuncs.count(c)) {
          why += (why.empty() ? "" : "; ") + c + " not in BTF";
          continue;
        }
        if (!syms.count(c)) {
          why += (why.empty() ? "" : "; ") + c + " not in /proc/kallsyms (inlined)";
          continue;
        }
        plan_.push_back({entry, "fentry:" + c, Attach::kFentry, c, ""});
        plan_.push_back({exit, "fexit:" + c, Attach::kFexit, c, ""});
        return;
      }
      plan_.push_back({entry, "fentry:" + candidates[0], Attach::kFentry, candidates[0], why});
      plan_.push_back({exit, "fexit:" + candidates[0], Attach::kFexit, candidates[0], why});
    };
    for (auto& pair : cat.fentry) add(pair.entry, pair.exit, pair.candidates);
    std::string why = !f.btfFuncs.count(cat.notifier) ? "not in BTF" : !syms.count(cat.notifier) ? "not in /proc/kallsyms" : "";
    plan_.push_back({"fe_notifier_start", "fentry:" + cat.notifier, Attach::kFentry, cat.notifier,
                     why.empty() ? "" : why + ": INVALIDATE_START from the kvm_unmap_hva_range tracepoint"});
  }

  // open(options) -> { retPf, rangeIsGfn, btf, probes }
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (skel_) return Throw(env, "EBUSY", EBUSY, "tracer already open: close() it first");
    if (info.Length() < 1 || !info[0].IsObject()) {
      Napi::TypeError::New(env, "Tracer.open(options): options must be an object").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Object o = info[0].As<Napi::Object>();
    std::string bad;
    const std::string mode = Str(o, "mode", "options", &bad);
    if (bad.empty() && mode != "kprobe" && mode != "fentry" && mode != "tracepoint")
      bad = "options.mode must be 'kprobe', 'fentry' or 'tracepoint' (got '" + mode + "')";
    if (bad.empty() && !o.Get("ringBytes").IsNumber()) bad = "options.ringBytes must be a number";
    if (bad.empty() && !o.Get("wakeupBytes").IsNumber()) bad = "options.wakeupBytes must be a number";
    const Catalogue cat = ReadCatalogue(o.Get("probes"), &bad);
    if (!bad.empty()) {
      Napi::TypeError::New(env, "Tracer.open: " + bad).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    mode_ = mode == "kprobe" ? Mode::kKprobe : mode == "fentry" ? Mode::kFentry : Mode::kTracepoint;
    verbose_ = o.Get("verbose").ToBoolean();
    const uint32_t pid = o.Get("pid").IsNumber() ? o.Get("pid").As<Napi::Number>().Uint32Value() : 0;
    const uint32_t ringBytes = o.Get("ringBytes").As<Napi::Number>().Uint32Value();
    const uint64_t wakeupBytes = o.Get("wakeupBytes").As<Napi::Number>().Int64Value();
    const bool coalesce = o.Get("coalesce").ToBoolean();
    const bool exits = o.Get("exits").ToBoolean();
    const bool raw = o.Get("rawTracepoints").ToBoolean();
    const bool stacks = !o.Get("invalidationStacks").IsBoolean() || o.Get("invalidationStacks").ToBoolean();
    plan_.clear();
    log_.clear();
    CollectScope scope(&log_, verbose_);

    std::string denied = MissingBpfCapabilities();
    if (!denied.empty()) return Throw(env, "EPERM", EPERM, denied);
    if (!Exists("/sys/kernel/btf/vmlinux"))
      return Throw(env, "NO_BTF", ENOENT,
                   "no BTF at /sys/kernel/btf/vmlinux: the kernel needs CONFIG_DEBUG_INFO_BTF=y for CO-RE");

    int btfErr = 0;
    KernelFacts facts;
    if (!ScanKernelBtf(&facts, &btfErr))
      return Throw(env, "NO_BTF", btfErr, "cannot read /sys/kernel/btf/vmlinux: " + std::string(strerror(btfErr)));
    if (!facts.haveKvm)
      return Throw(env, "NO_KVM", ENOENT,
                   "KVM is not in this kernel's BTF (no struct kvm_vcpu in " + facts.btfSources +
                       "): load the kvm module (modprobe kvm_intel or kvm_amd) or use a kernel with KVM");

    if (mode_ == Mode::kKprobe) {
      PlanKprobes(cat);
      PlanTracepoints(facts, cat, raw, false);
      std::string why = KprobeUnavailableReason();
      if (!why.empty()) {
        for (auto& p : plan_) p.reason = p.reason.empty() ? "mode kprobe unavailable: " + why : p.reason;
        return Throw(env, "MODE_UNAVAILABLE", EOPNOTSUPP, why, true);
      }
    } else if (mode_ == Mode::kFentry) {
      PlanFentry(facts, cat);
      PlanTracepoints(facts, cat, raw, false);
    } else {
      PlanTracepoints(facts, cat, raw, true);
    }
    // The mode needs at least one of its own fault probes (the shared MAP/INVALIDATE tracepoints
    // alone would make kprobe/fentry mode a mislabelled tracepoint mode).
    const char* own = mode_ == Mode::kKprobe ? "kp_" : mode_ == Mode::kFentry ? "fe_" : nullptr;
    bool any = false;
    for (auto& p : plan_) {
      if (!p.reason.empty()) continue;
      if (own ? p.prog.rfind(own, 0) == 0 && p.prog.find("notifier") == std::string::npos
              : (p.prog.find("spte_requested") != std::string::npos || cat.IsFaultEntryTp(p.prog.substr(3))))
        any = true;
    }
    if (!any)
      return Throw(env, "NO_KVM_PROBES", ENOENT,
                   "none of this mode's KVM fault probe points exists on this kernel (see .probes for each)", true);

    skel_ = kvmfault_bpf__open();
    if (!skel_) {
      int err = errno;
      return Throw(env, "OPEN_FAILED", err, "opening the BPF object failed: " + Tail(log_, 3));
    }
    // Only the planned programs load; everything else is switched off.
    struct bpf_program* prog;
    bpf_object__for_each_program(prog, skel_->obj) bpf_program__set_autoload(prog, false);
    for (auto& p : plan_) {
      if (!p.reason.empty()) continue;
      struct bpf_program* pr = Prog(p.prog);
      if (!pr) {
        p.reason = "program " + p.prog + " missing from the object (build mismatch)";
        continue;
      }
      bpf_program__set_autoload(pr, true);
      if (p.how == Attach::kFentry || p.how == Attach::kFexit) bpf_program__set_attach_target(pr, 0, p.target.c_str());
    }
    auto* ro = skel_->rodata;
    ro->targ_tgid = pid;
    ro->coalesce = coalesce;
    ro->emit_exits = exits;
    ro->pairing_by_hash = mode_ == Mode::kKprobe;
    ro->range_is_gfn = facts.rangeIsGfn;
    ro->wakeup_bytes = wakeupBytes;
    ro->invalidation_stacks = stacks;
    // raw: no typed program loads, so none would use it (and typedKvmLoads says false)
    ro->kvm_typed_cast = facts.kvmTypedCast && !raw;
    // vmIdKey: the caller's (lib/tracer.ts shares it with the memslot iterator, so a VM has one
    // id in both); else random
    uint64_t key = 0;
    bool lossless = true;
    if (o.Get("vmIdKey").IsBigInt()) key = o.Get("vmIdKey").As<Napi::BigInt>().Uint64Value(&lossless);
    else if (getrandom(&key, sizeof key, 0) != sizeof key) key = (uint64_t)time(nullptr) * 0x9e3779b97f4a7c15ULL;
    ro->vm_id_key = key;
    auto rp = [&](const char* n) -> int32_t {
      auto it = facts.retPf.find(n);
      return it == facts.retPf.end() ? INT32_MIN : (int32_t)it->second;
    };
    ro->ret_pf_continue = rp("RET_PF_CONTINUE");
    ro->ret_pf_retry = rp("RET_PF_RETRY");
    ro->ret_pf_emulate = rp("RET_PF_EMULATE");
    ro->ret_pf_fixed = rp("RET_PF_FIXED");
    ro->ret_pf_spurious = rp("RET_PF_SPURIOUS");
    int err = bpf_map__set_max_entries(skel_->maps.ring, ringBytes);
    if (err) return Throw(env, "EINVAL", err, "ring size " + std::to_string(ringBytes) + " rejected by libbpf");

    exitHook_.Arm(env, [](void* self) { static_cast<Tracer*>(self)->Destroy(); }, this);

    Napi::Object out = Napi::Object::New(env);
    Napi::Object retPf = Napi::Object::New(env);
    for (auto& kv : facts.retPf) retPf.Set(kv.first, Napi::Number::New(env, (double)kv.second));
    out.Set("retPf", retPf);
    out.Set("rangeIsGfn", facts.rangeIsGfn);
    out.Set("typedKvmLoads", (bool)skel_->rodata->kvm_typed_cast);
    out.Set("btf", facts.btfSources);
    out.Set("staleCheck", StaleCheckObject(env, facts));
    out.Set("probes", PlanArray(env));
    return out;
  }

  Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!skel_) return Throw(env, "ECLOSED", EBADF, "tracer is not open");
    CollectScope scope(&log_, verbose_);
    int err = kvmfault_bpf__load(skel_);
    if (err) {
      err = err < 0 ? -err : err;
      std::string what = mode_ == Mode::kFentry ? "fentry" : mode_ == Mode::kKprobe ? "kprobe" : "tracepoint";
      for (auto& p : plan_)
        if (p.reason.empty()) p.reason = what + ": load failed: " + strerror(err);
      if (err == EPERM || err == EACCES)
        return Throw(env, mode_ == Mode::kFentry ? "MODE_UNAVAILABLE" : "EPERM", err,
                     what + ": " + strerror(err) +
                         (mode_ == Mode::kFentry ? " (this kernel does not allow fentry/fexit programs: lockdown or "
                                                  "policy; use mode 'tracepoint' or 'kprobe')"
                                                : " (run as root; check kernel.unprivileged_bpf_disabled and lockdown)") +
                         "\nlibbpf: " + WithoutMemlockHint(Tail(log_, 4)),
                     true);
      return Throw(env, "LOAD_FAILED", err,
                   what + " programs failed to load: " + strerror(err) + "\nlibbpf: " + Tail(log_, 8), true);
    }
    loaded_ = true;
    return env.Undefined();
  }

  // stack(id) -> BigUint64Array of the kernel return addresses (innermost first) an
  // INVALIDATE_START's stack_id names, or null when the map has no such id. Called once per
  // distinct id (lib/sources.ts caches the source it resolves to).
  Napi::Value Stack(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!loaded_) return Throw(env, "ECLOSED", EBADF, "tracer is not loaded");
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, "Tracer.stack(id): id must be a number").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    uint64_t ips[KF_STACK_DEPTH] = {};
    if (bpf_map__lookup_elem(skel_->maps.stacks, &id, sizeof id, ips, sizeof ips, 0)) return env.Null();
    size_t n = 0;
    while (n < KF_STACK_DEPTH && ips[n]) n++;
    auto out = Napi::BigUint64Array::New(env, n);
    for (size_t i = 0; i < n; i++) out[i] = ips[i];
    return out;
  }

  Napi::Value AttachAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!loaded_) return Throw(env, "ECLOSED", EBADF, "tracer is not loaded");
    CollectScope scope(&log_, verbose_);
    // Returns (fexit, kretprobe) before everything else: a call that began between its entry
    // probe's attach and its return probe's would count as entered and never return (the
    // handler pairing's depth stuck above 0: one FAULT, then none, for a vCPU already retrying
    // when the tracer opened). A return without its entry is ignored by the programs.
    for (int pass = 0; pass < 2; pass++)
    for (auto& p : plan_) {
      if (!p.reason.empty() || p.attached) continue;
      const bool isReturn = p.how == Attach::kFexit || p.how == Attach::kKretprobe;
      if (isReturn != (pass == 0)) continue;
      struct bpf_program* pr = Prog(p.prog);
      struct bpf_link* link = nullptr;
      switch (p.how) {
        case Attach::kTpBtf:
        case Attach::kFentry:
        case Attach::kFexit:
          link = bpf_program__attach_trace(pr);
          break;
        case Attach::kRawTp:
          link = bpf_program__attach_raw_tracepoint(pr, p.target.c_str());
          break;
        case Attach::kKprobe:
        case Attach::kKretprobe:
          link = bpf_program__attach_kprobe(pr, p.how == Attach::kKretprobe, p.target.c_str());
          break;
      }
      if (!link) {
        int err = errno;
        p.reason = std::string("attach failed: ") + strerror(err);
        continue;
      }
      links_.push_back(link);
      p.attached = true;
    }
    return PlanArray(env);
  }

  Napi::Value RingFd(const Napi::CallbackInfo& info) {
    if (!loaded_) return Throw(info.Env(), "ECLOSED", EBADF, "tracer is not loaded");
    return Napi::Number::New(info.Env(), bpf_map__fd(skel_->maps.ring));
  }

  // { submitted, dropped, bpfStatsEnabled, programs: [{ name, runCount, runTimeNs }] }
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    if (!loaded_) {
      out.Set("submitted", 0);
      out.Set("dropped", 0);
      out.Set("bpfStatsEnabled", false);
      out.Set("programs", Napi::Array::New(env));
      return out;
    }
    out.Set("submitted", (double)__atomic_load_n(&skel_->bss->kf_submitted, __ATOMIC_RELAXED));
    out.Set("dropped", (double)__atomic_load_n(&skel_->bss->kf_dropped, __ATOMIC_RELAXED));
    int enabled = 0;
    if (FILE* f = fopen("/proc/sys/kernel/bpf_stats_enabled", "r")) {
      if (fscanf(f, "%d", &enabled) != 1) enabled = 0;
      fclose(f);
    }
    out.Set("bpfStatsEnabled", enabled != 0);
    Napi::Array progs = Napi::Array::New(env);
    uint32_t n = 0;
    struct bpf_program* prog;
    bpf_object__for_each_program(prog, skel_->obj) {
      int fd = bpf_program__fd(prog);
      if (fd < 0) continue;
      struct bpf_prog_info pi = {};
      __u32 len = sizeof pi;
      if (bpf_obj_get_info_by_fd(fd, &pi, &len)) continue;
      Napi::Object p = Napi::Object::New(env);
      p.Set("name", bpf_program__name(prog));
      p.Set("runCount", (double)pi.run_cnt);  // counted only while kernel.bpf_stats_enabled=1
      p.Set("runTimeNs", (double)pi.run_time_ns);
      progs.Set(n++, p);
    }
    out.Set("programs", progs);
    return out;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Destroy();
    return info.Env().Undefined();
  }
};

Napi::Object InitTracer(Napi::Env env, Napi::Object exports) {
  libbpf_set_print(LibbpfPrint);
  exports.Set("Tracer", Tracer::Define(env));
  exports.Set("kernelBtf", Napi::Function::New(env, KernelBtf, "kernelBtf"));
  return exports;
}

}  // namespace
}  // namespace kvmfault

KVMFAULT_REGISTER(tracer, kvmfault::InitTracer);
