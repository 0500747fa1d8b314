#include "common.h"

#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include <libbpf.h>

namespace weft {

std::string ErrnoCode(int err) {
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  // Kernel-internal codes that BPF syscalls leak to user space (include/linux/errno.h).
  if (err == 524) return "ENOTSUPP";
  if (err == 525) return "ETOOSMALL";
  // libbpf's own codes (enum libbpf_errno, from 4000).
  static const char* const kLibbpf[] = {"LIBELF", "FORMAT", "KVERSION", "ENDIAN", "INTERNAL", "RELOC", "LOAD",
                                         "VERIFY", "PROG2BIG", "KVER", "PROGTYPE", "WRNGPID", "INVSEQ", "NLPARSE"};
  if (err >= 4000 && err < 4000 + static_cast<int>(sizeof kLibbpf / sizeof kLibbpf[0])) {
    return std::string("LIBBPF_ERRNO__") + kLibbpf[err - 4000];
  }
  return "E" + std::to_string(err);
}

// strerror(), with words for the kernel-internal codes glibc does not know.
static std::string Reason(int err) {
  if (err == 524) return "Operation not supported by this kernel or map type";
  if (err >= 4000 && err < 4100) {
    char buf[128];
    libbpf_strerror(err, buf, sizeof buf);
    return buf;
  }
  return strerror(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& op, const std::string& subject,
                       const Fields& fields) {
  if (err < 0) err = -err;
  std::string code = ErrnoCode(err);
  std::string msg = op;
  if (!subject.empty()) msg += " " + subject;
  msg += ": ";
  msg += Reason(err);
  msg += " (" + code + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  Napi::Object o = e.Value();
  o.Set("errno", Napi::Number::New(env, err));
  o.Set("code", Napi::String::New(env, code));
  o.Set("syscall", Napi::String::New(env, op));
  o.Set("reason", Napi::String::New(env, Reason(err)));
  for (const auto& f : fields) o.Set(f.first, Napi::String::New(env, f.second));
  return e;
}

Napi::Value ThrowErrno(Napi::Env env, int err, const std::string& op, const std::string& subject,
                       const Fields& fields) {
  ErrnoError(env, err, op, subject, fields).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ArgInt(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t* out) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowType(info.Env(), std::string(what) + " must be a number");
    return false;
  }
  *out = info[i].As<Napi::Number>().Int64Value();
  return true;
}

bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* what, std::string* out) {
  if (info.Length() <= i || !info[i].IsString()) {
    ThrowType(info.Env(), std::string(what) + " must be a string");
    return false;
  }
  *out = info[i].As<Napi::String>().Utf8Value();
  return true;
}

bool ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* what, uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), std::string(what) + " must be a Buffer or Uint8Array");
    return false;
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
  return true;
}

FdGuard::~FdGuard() {
  if (fd_ >= 0) close(fd_);
}

// The namespace each thread started in, opened once per thread (an open and a close saved on
// every socket made in a pod's namespace). A thread is only ever inside another namespace within
// a NetnsGuard's life, so the first look is taken at home.
static thread_local int homeNetns = -1;

int NetnsGuard::Enter(const std::string& nsPath, std::string* failedOp) {
  if (homeNetns < 0) {
    homeNetns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (homeNetns < 0) {
      *failedOp = "open /proc/thread-self/ns/net";
      return errno;
    }
  }
  orig_ = homeNetns;
  FdGuard target(open(nsPath.c_str(), O_RDONLY | O_CLOEXEC));
  if (target.get() < 0) {
    *failedOp = "open";
    return errno;
  }
  if (setns(target.get(), CLONE_NEWNET) < 0) {
    *failedOp = "setns";
    return errno;
  }
  entered_ = true;
  return 0;
}

NetnsGuard::~NetnsGuard() {
  if (entered_ && setns(orig_, CLONE_NEWNET) < 0) {
    // A JavaScript thread left in a foreign network namespace would silently open every later
    // socket there; stopping is the only safe answer.
    fprintf(stderr, "weft_bpf: cannot return to the original network namespace: %s\n", strerror(errno));
    abort();
  }
}

static thread_local LogCapture* currentCapture = nullptr;

LogCapture::LogCapture() : prev_(currentCapture) { currentCapture = this; }
LogCapture::~LogCapture() { currentCapture = prev_; }

static int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  static const bool debug = getenv("WEFT_LIBBPF_DEBUG") != nullptr;
  char small[1024];
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(small, sizeof small, fmt, copy);
  va_end(copy);
  std::string line;
  if (n >= static_cast<int>(sizeof small)) {
    // Verifier logs arrive as one long message.
    std::vector<char> big(static_cast<size_t>(n) + 1);
    vsnprintf(big.data(), big.size(), fmt, args);
    line.assign(big.data(), static_cast<size_t>(n));
  } else if (n > 0) {
    line.assign(small, static_cast<size_t>(n));
  }
  if (currentCapture != nullptr && level != LIBBPF_DEBUG) currentCapture->Append(line.c_str());
  if (debug) fputs(line.c_str(), stderr);
  return n;
}

void InstallLibbpfPrint() { libbpf_set_print(LibbpfPrint); }

int DupFd(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 3); }

}  // namespace weft
