// RingBuffer: consumes a BPF_MAP_TYPE_RINGBUF on a thread of its own and hands the records to a
// JavaScript callback through a ThreadSafeFunction, so the event loop never waits on the kernel.
// The thread sleeps in epoll_wait on libbpf's epoll fd and an eventfd; close() writes the eventfd,
// joins the thread, then releases the ThreadSafeFunction.
#include <libbpf.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"
#include "exports.h"

namespace weft {
namespace {

using Record = std::vector<uint8_t>;
using Batch = std::vector<Record>;

class RingBufferHandle : public Napi::ObjectWrap<RingBufferHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingBuffer",
                       {
                           InstanceMethod("close", &RingBufferHandle::Close),
                           InstanceMethod("ref", &RingBufferHandle::Ref),
                           InstanceMethod("unref", &RingBufferHandle::Unref),
                       });
  }

  // new RingBuffer(mapFd, onRecords: (records: Buffer[]) => void)
  explicit RingBufferHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingBufferHandle>(info) {
    Napi::Env env = info.Env();
    int64_t mapFd;
    if (!ArgInt(info, 0, "mapFd", &mapFd)) return;
    if (info.Length() < 2 || !info[1].IsFunction()) {
      ThrowType(env, "onRecords must be a function");
      return;
    }
    LogCapture log;
    rb_ = ring_buffer__new(static_cast<int>(mapFd), &RingBufferHandle::OnSample, this, nullptr);
    if (rb_ == nullptr) {
      Napi::Error e = ErrnoError(env, errno, "ring_buffer__new", "");
      e.Value().Set("libbpfLog", log.text());
      e.ThrowAsJavaScriptException();
      return;
    }
    stop_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    if (stop_ < 0 || epoll_ < 0 || !Watch(ring_buffer__epoll_fd(rb_), 0) || !Watch(stop_, 1)) {
      int err = errno;
      Free();
      ThrowErrno(env, err, "epoll", "ring buffer");
      return;
    }
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "weft ring buffer", 0, 1);
    thread_ = std::thread(&RingBufferHandle::Run, this);
  }

  ~RingBufferHandle() override { Stop(); }

 private:
  bool Watch(int fd, uint64_t tag) {
    epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &ev) == 0;
  }

  static int OnSample(void* ctx, void* data, size_t size) {
    auto* self = static_cast<RingBufferHandle*>(ctx);
    const uint8_t* p = static_cast<const uint8_t*>(data);
    self->pending_.emplace_back(p, p + size);
    return 0;
  }

  // The consumer thread: wait, drain every ring, deliver the batch in one call.
  void Run() {
    epoll_event events[2];
    for (;;) {
      int n = epoll_wait(epoll_, events, 2, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      bool stop = false;
      for (int i = 0; i < n; i++) stop = stop || events[i].data.u64 == 1;
      // Drain also when stopping, so records produced before close() are not lost.
      if (ring_buffer__consume(rb_) < 0 && !stop) break;
      if (!pending_.empty()) {
        auto* batch = new Batch(std::move(pending_));
        pending_.clear();
        if (tsfn_.NonBlockingCall(batch, &RingBufferHandle::Deliver) != napi_ok) delete batch;
      }
      if (stop) break;
    }
  }

  // On the JavaScript thread: records -> Buffer[] -> callback.
  static void Deliver(Napi::Env env, Napi::Function callback, Batch* batch) {
    std::unique_ptr<Batch> owned(batch);
    if (env == nullptr || callback.IsEmpty()) return;
    Napi::Array records = Napi::Array::New(env, owned->size());
    for (size_t i = 0; i < owned->size(); i++) {
      Record& r = (*owned)[i];
      records.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, r.data(), r.size()));
    }
    callback.Call({records});
  }

  void Stop() {
    if (thread_.joinable()) {
      uint64_t one = 1;
      ssize_t w = write(stop_, &one, sizeof one);
      (void)w;
      thread_.join();
      tsfn_.Release();
    }
    Free();
  }

  void Free() {
    if (rb_ != nullptr) ring_buffer__free(rb_);
    rb_ = nullptr;
    if (epoll_ >= 0) close(epoll_);
    epoll_ = -1;
    if (stop_ >= 0) close(stop_);
    stop_ = -1;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Stop();
    return info.Env().Undefined();
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (thread_.joinable()) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (thread_.joinable()) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  ring_buffer* rb_ = nullptr;
  int epoll_ = -1;
  int stop_ = -1;
  Batch pending_;  // touched only by the consumer thread
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
};

}  // namespace

void InitRingBuffer(Napi::Env env, Napi::Object exports) { exports.Set("RingBuffer", RingBufferHandle::Define(env)); }

}  // namespace weft
