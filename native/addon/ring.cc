// ring.cc - a BPF ring buffer map, mapped into this process for the JS consumer (lib/ring.ts).
//
// `new Ring(mapFd)` dup()s the map fd (the Ring outlives whoever opened the map) and maps it
// exactly as libbpf's ring_buffer__add() does: the consumer page read-write (consumer_pos at
// offset 0), then the producer page (producer_pos) followed by the data area mapped TWICE back
// to back, read-only, so a record that wraps is still contiguous. buffers() wraps the three
// regions as external ArrayBuffers created once; the mapping is owned by a shared_ptr that every
// buffer's finalizer holds, so munmap happens only after the last buffer is garbage collected
// (close() before that leaves JS reading valid memory, never unmapped pages).
//
// Wakeups: pollStart(cb) runs cb on the JS thread when the kernel wakes the ring's waiters.
// The map fd itself is level-triggered (readable whenever producer_pos != consumer_pos), so
// polling it directly wakes on every re-arm while the producer is busy and defeats the
// producer's wakeup_bytes batching (measured: ~6 records per wakeup). By default the ring fd
// sits EDGE-triggered in a private epoll instance and uv_poll watches that: a callback means
// "the kernel woke us" (a forced wakeup, or a record committed while we had caught up). That
// makes a lost wakeup a hang, so the consumer must publish consumer_pos, fence and re-check
// producer_pos before sleeping (lib/ring.ts does). `new Ring(fd, { edgeTriggered: false })`
// polls the map fd directly. pollStop() disarms (the handle stays: re-arming allocates
// nothing). countRun() is the zero-copy walk's fast part. Copying fallback: drainCopy(dst).
#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "module.h"

namespace {

// countRun prefetches this many records ahead (16 x 128 bytes = 2 KiB).
constexpr size_t kRunPrefetch = 16;

// The mapped regions; unmapped when the last ArrayBuffer over them is collected.
struct Mapping {
  void* consumer = MAP_FAILED;  // 1 page RW
  void* producer = MAP_FAILED;  // 1 page RO + 2 * size RO data
  size_t page = 0, size = 0;
  ~Mapping() {
    if (consumer != MAP_FAILED) munmap(consumer, page);
    if (producer != MAP_FAILED) munmap(producer, page + 2 * size);
  }
  uint64_t* consumerPos() const { return static_cast<uint64_t*>(consumer); }
  const uint64_t* producerPos() const { return static_cast<const uint64_t*>(producer); }
  const uint8_t* data() const { return static_cast<const uint8_t*>(producer) + page; }
};

class Ring : public Napi::ObjectWrap<Ring> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Ring", {
        InstanceMethod("buffers", &Ring::Buffers),
        InstanceMethod("pollStart", &Ring::PollStart),
        InstanceMethod("pollStop", &Ring::PollStop),
        InstanceMethod("commit", &Ring::Commit),
        InstanceMethod("drainCopy", &Ring::DrainCopy),
        InstanceMethod("countRun", &Ring::CountRun),
        InstanceMethod("close", &Ring::Close),
        InstanceAccessor("size", &Ring::Size, nullptr),
        InstanceAccessor("closed", &Ring::Closed, nullptr),
    });
  }

  Ring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Ring>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, "Ring(mapFd): mapFd must be a BPF ring buffer map fd (number)")
          .ThrowAsJavaScriptException();
      return;
    }
    int src = info[0].As<Napi::Number>().Int32Value();
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Value et = info[1].As<Napi::Object>().Get("edgeTriggered");
      if (et.IsBoolean()) edge_ = et.As<Napi::Boolean>().Value();
    }
    fd_ = fcntl(src, F_DUPFD_CLOEXEC, 3);
    if (fd_ < 0) {
      kvmfault::ThrowErrno(env, "Ring: dup map fd", errno, "pass an open BPF map fd");
      return;
    }
    struct bpf_map_info mi;
    memset(&mi, 0, sizeof(mi));
    __u32 len = sizeof(mi);
    if (bpf_obj_get_info_by_fd(fd_, &mi, &len)) {
      int err = errno;
      Release();
      kvmfault::ThrowErrno(env, "Ring: bpf_obj_get_info_by_fd", err, "the fd is not a BPF map");
      return;
    }
    if (mi.type != BPF_MAP_TYPE_RINGBUF) {
      Release();
      Napi::TypeError::New(env, "Ring(mapFd): map type " + std::to_string(mi.type) +
                                    " is not BPF_MAP_TYPE_RINGBUF (" +
                                    std::to_string(BPF_MAP_TYPE_RINGBUF) + ")")
          .ThrowAsJavaScriptException();
      return;
    }
    map_ = std::make_shared<Mapping>();
    map_->page = sysconf(_SC_PAGESIZE);
    map_->size = mi.max_entries;
    map_->consumer = mmap(nullptr, map_->page, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (map_->consumer == MAP_FAILED) {
      int err = errno;
      Release();
      kvmfault::ThrowErrno(env, "Ring: mmap consumer page", err);
      return;
    }
    map_->producer =
        mmap(nullptr, map_->page + 2 * map_->size, PROT_READ, MAP_SHARED, fd_, map_->page);
    if (map_->producer == MAP_FAILED) {
      int err = errno;
      Release();
      kvmfault::ThrowErrno(env, "Ring: mmap producer page + data", err);
      return;
    }
    exitHook_.Arm(env, [](void* self) { static_cast<Ring*>(self)->Release(); }, this);
  }

  ~Ring() override { Release(); }

 private:
  // Stops the poll, closes the fd, drops this object's share of the mapping. Idempotent.
  void Release() {
    if (poll_) {
      if (polling_) {
        uv_poll_stop(poll_);
        polling_ = false;
        Unref();  // matches the Ref() in PollStart
      }
      poll_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(poll_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    pollCb_.Reset();
    buffers_.Reset();
    if (epfd_ >= 0) close(epfd_);
    epfd_ = -1;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    map_.reset();
    exitHook_.Disarm();
  }

  bool CheckOpen(Napi::Env env, const char* what) {
    if (map_) return true;
    Napi::Error::New(env, std::string("Ring.") + what + ": the ring is closed").ThrowAsJavaScriptException();
    return false;
  }

  Napi::ArrayBuffer External(Napi::Env env, void* p, size_t n) {
    auto* owner = new std::shared_ptr<Mapping>(map_);
    return Napi::ArrayBuffer::New(
        env, p, n, [](Napi::Env, void*, std::shared_ptr<Mapping>* o) { delete o; }, owner);
  }

  // { consumer: AB(page, RW), producer: AB(page, RO), data: AB(2*size, RO), size }.
  // Created on the first call and returned again after: V8 aborts on a second external
  // buffer over an address that already has one.
  Napi::Value Buffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!buffers_.IsEmpty()) return buffers_.Value();
    if (!CheckOpen(env, "buffers")) return env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    o.Set("consumer", External(env, map_->consumer, map_->page));
    o.Set("producer", External(env, map_->producer, map_->page));
    o.Set("data", External(env, const_cast<uint8_t*>(map_->data()), 2 * map_->size));
    o.Set("size", Napi::Number::New(env, static_cast<double>(map_->size)));
    buffers_ = Napi::Persistent(o);
    return o;
  }

  Napi::Value Size(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), map_ ? static_cast<double>(map_->size) : 0);
  }
  Napi::Value Closed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !map_);
  }

  // pollStart(cb?): arm the wakeup; cb replaces the stored callback (omit it to re-arm with
  // the previous one: re-arming per batch allocates nothing).
  Napi::Value PollStart(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "pollStart")) return env.Undefined();
    if (info.Length() > 0 && info[0].IsFunction()) {
      pollCb_ = Napi::Persistent(info[0].As<Napi::Function>());
    } else if (pollCb_.IsEmpty()) {
      Napi::TypeError::New(env, "Ring.pollStart(cb): cb must be a function").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!poll_) {
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
        Napi::Error::New(env, "Ring.pollStart: no libuv loop in this environment").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      int watched = fd_;
      if (edge_) {
        if (epfd_ < 0) {
          epfd_ = epoll_create1(EPOLL_CLOEXEC);
          if (epfd_ < 0) {
            kvmfault::ThrowErrno(env, "Ring.pollStart: epoll_create1", errno);
            return env.Undefined();
          }
          struct epoll_event ev = {};
          ev.events = EPOLLIN | EPOLLET;
          if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd_, &ev)) {
            int err = errno;
            close(epfd_);
            epfd_ = -1;
            kvmfault::ThrowErrno(env, "Ring.pollStart: epoll_ctl(ring fd, EPOLLET)", err);
            return env.Undefined();
          }
        }
        watched = epfd_;
      }
      poll_ = new uv_poll_t;
      int rc = uv_poll_init(loop, poll_, watched);
      if (rc) {
        delete poll_;
        poll_ = nullptr;
        kvmfault::ThrowErrno(env, "Ring.pollStart: uv_poll_init", -rc);
        return env.Undefined();
      }
    }
    poll_->data = this;
    if (polling_) return env.Undefined();
    int rc = uv_poll_start(poll_, UV_READABLE, &Ring::OnReadable);
    if (rc) {
      kvmfault::ThrowErrno(env, "Ring.pollStart: uv_poll_start", -rc);
      return env.Undefined();
    }
    polling_ = true;
    Ref();  // an armed poll points at this object: keep it alive until pollStop/close
    return env.Undefined();
  }

  static void OnReadable(uv_poll_t* h, int status, int events) {
    Ring* self = static_cast<Ring*>(h->data);
    if (!self || self->pollCb_.IsEmpty()) return;
    if (self->epfd_ >= 0) {
      // take the edge event off the private epoll, or its fd stays readable for uv_poll
      struct epoll_event ev[2];
      while (epoll_wait(self->epfd_, ev, 2, 0) > 0) {
      }
    }
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    // status < 0 (e.g. EBADF) is passed on so JS can end the stream with an error
    Napi::Value arg = Napi::Number::New(env, status);
    self->pollCb_.MakeCallback(env.Global(), {arg});
    if (env.IsExceptionPending())
      napi_fatal_exception(env, env.GetAndClearPendingException().Value());
  }

  Napi::Value PollStop(const Napi::CallbackInfo& info) {
    if (poll_ && polling_) {
      uv_poll_stop(poll_);
      polling_ = false;
      Unref();
    }
    return info.Env().Undefined();
  }

  // commit(pos): publish consumer_pos from native code (alternative to Atomics.store, for
  // measuring). Release store so the kernel sees our reads done before it reuses the space,
  // then a full fence: the caller re-reads producer_pos next, and a store->load reorder there
  // is exactly the lost-wakeup bug (the kernel would see the old consumer_pos and not wake us).
  Napi::Value Commit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "commit")) return env.Undefined();
    uint64_t pos = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
    __atomic_store_n(map_->consumerPos(), pos, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return env.Undefined();
  }

  // drainCopy(dst: Uint8Array, recordSize = 120) -> records copied.
  // Copying fallback: walks committed records natively, copies each payload into the next
  // recordSize-byte slot of dst (shorter payloads zero-padded, longer truncated), skips
  // discarded records, stops at a busy record or when dst is full, then publishes
  // consumer_pos (release + fence, as in commit).
  Napi::Value DrainCopy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "drainCopy")) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray()) {
      Napi::TypeError::New(env, "Ring.drainCopy(dst): dst must be a Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Uint8Array dst = info[0].As<Napi::Uint8Array>();
    size_t recordSize = info.Length() > 1 && info[1].IsNumber()
                            ? info[1].As<Napi::Number>().Uint32Value() : 120;
    if (recordSize == 0) recordSize = 120;
    uint8_t* out = dst.Data();
    const size_t slots = dst.ByteLength() / recordSize;
    const size_t mask = map_->size - 1;
    const uint8_t* data = map_->data();
    uint64_t cons = __atomic_load_n(map_->consumerPos(), __ATOMIC_ACQUIRE);
    const uint64_t prod = __atomic_load_n(map_->producerPos(), __ATOMIC_ACQUIRE);
    size_t n = 0;
    while (cons < prod && n < slots) {
      const uint32_t* hdr = reinterpret_cast<const uint32_t*>(data + (cons & mask));
      uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
      if (len & BPF_RINGBUF_BUSY_BIT) break;  // reserved, not committed yet
      uint32_t plen = len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
      if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
        size_t c = plen < recordSize ? plen : recordSize;
        memcpy(out + n * recordSize, reinterpret_cast<const uint8_t*>(hdr) + BPF_RINGBUF_HDR_SZ, c);
        if (c < recordSize) memset(out + n * recordSize + c, 0, recordSize - c);
        n++;
      }
      cons += (plen + BPF_RINGBUF_HDR_SZ + 7) & ~7u;
    }
    __atomic_store_n(map_->consumerPos(), cons, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // countRun(off, stride, word, limit) -> k: how many records in a row, the first with its
  // header at byte `off` of the data area and the rest `stride` bytes apart, have the header
  // word `word` (at most `limit`). The zero-copy walk's fast part (lib/ring.ts): every address is
  // known in advance, so each header's line is prefetched kRunPrefetch records ahead and the
  // loads overlap (measured: ~1.3x the same loop in JS, which cannot prefetch). Reads stay inside
  // the double-mapped data area whatever the arguments; prefetches never fault.
  Napi::Value CountRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "countRun")) return env.Undefined();
    const size_t off = info[0].As<Napi::Number>().Uint32Value();
    const size_t stride = info[1].As<Napi::Number>().Uint32Value();
    const uint32_t word = info[2].As<Napi::Number>().Uint32Value();
    size_t limit = info[3].As<Napi::Number>().Uint32Value();
    const size_t end = 2 * map_->size;
    if (stride < BPF_RINGBUF_HDR_SZ || off + sizeof(uint32_t) > end) return Napi::Number::New(env, 0);
    limit = std::min(limit, (end - off - sizeof(uint32_t)) / stride + 1);
    const uint8_t* p = map_->data() + off;
    const size_t ahead = kRunPrefetch * stride;
    size_t k = 0;
    for (; k < limit; k++) {
      const uint8_t* h = p + k * stride;
      __builtin_prefetch(h + ahead);
      if (__atomic_load_n(reinterpret_cast<const uint32_t*>(h), __ATOMIC_ACQUIRE) != word) break;
    }
    return Napi::Number::New(env, static_cast<double>(k));
  }

  // close(): idempotent. Buffers handed out stay readable until collected.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  kvmfault::EnvExitHook exitHook_;
  int fd_ = -1;
  int epfd_ = -1;      // private epoll holding fd_ edge-triggered (edge_)
  bool edge_ = true;
  std::shared_ptr<Mapping> map_;
  Napi::ObjectReference buffers_;
  uv_poll_t* poll_ = nullptr;
  bool polling_ = false;
  Napi::FunctionReference pollCb_;
};

Napi::Object InitRing(Napi::Env env, Napi::Object exports) {
  exports.Set("Ring", Ring::Define(env));
  return exports;
}

}  // namespace

KVMFAULT_REGISTER(ring, InitRing);
