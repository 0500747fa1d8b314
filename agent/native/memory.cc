// The C heap of the agent process: glibc's malloc statistics and malloc_trim. Node's buffers (socket
// reads, TLS records, HTTP/2 frames) come from malloc; after a bulk stream glibc keeps the freed
// chunks in its free lists, scattered between live ones, so the process stays at its high-water
// mark. malloc_trim(0) hands every whole free page back to the kernel (MADV_DONTNEED), not only
// the top of the heap as free() does (docs/PERFORMANCE.md, agent memory).
#include <malloc.h>

#include "common.h"
#include "exports.h"

namespace weft {
namespace {

// mallocTrim() -> boolean: whether any memory went back to the kernel.
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

// mallocInfo() -> { heapBytes, mmapBytes, inUseBytes, freeBytes } over every arena (mallinfo2).
Napi::Value MallocInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct mallinfo2 m = mallinfo2();
  Napi::Object out = Napi::Object::New(env);
  out.Set("heapBytes", Napi::Number::New(env, static_cast<double>(m.arena)));
  out.Set("mmapBytes", Napi::Number::New(env, static_cast<double>(m.hblkhd)));
  out.Set("inUseBytes", Napi::Number::New(env, static_cast<double>(m.uordblks + m.hblkhd)));
  out.Set("freeBytes", Napi::Number::New(env, static_cast<double>(m.fordblks)));
  return out;
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
  exports.Set("mallocInfo", Napi::Function::New(env, MallocInfo, "mallocInfo"));
}

}  // namespace weft
