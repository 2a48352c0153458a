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

}  // namespace kvmfault

#define KVMFAULT_REGISTER(name, fn) \
  static ::kvmfault::Registrar kvmfault_registrar_##name(#name, fn)
