// Module entry of weft_bpf: the raw binding declared in agent/libbpf/native.ts.
#include <napi.h>

#include "common.h"
#include "exports.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  weft::InstallLibbpfPrint();
  weft::InitObject(env, exports);
  weft::InitFdOps(env, exports);
  weft::InitRingBuffer(env, exports);
  weft::InitNetns(env, exports);
  weft::InitBtf(env, exports);
  weft::InitMemory(env, exports);
  return exports;
}

NODE_API_MODULE(weft_bpf, Init)
