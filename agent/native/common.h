// Shared helpers of the Weft libbpf binding: errno errors for JavaScript, argument readers, fd and
// network-namespace guards, and the capture of libbpf's own log messages.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

// Attach and link types newer than the kernel headers of Debian 12's linux-libc-dev (6.1).
#define WEFT_BPF_TCX_INGRESS 46
#define WEFT_BPF_TCX_EGRESS 47
#define WEFT_BPF_LINK_TYPE_TCX 11

namespace weft {

// Extra string fields set on an error object (e.g. {"path", "/sys/fs/bpf/x"}).
using Fields = std::vector<std::pair<std::string, std::string>>;

// The symbolic errno name ("ENOENT"), or "E<number>" for one glibc does not know.
std::string ErrnoCode(int err);

// A JavaScript Error "<op>[ <subject>]: <strerror> (<CODE>)" with errno, code, syscall and fields.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& op, const std::string& subject,
                       const Fields& fields = {});
// Throws ErrnoError; returns undefined for `return ThrowErrno(...)`.
Napi::Value ThrowErrno(Napi::Env env, int err, const std::string& op, const std::string& subject,
                       const Fields& fields = {});
// Throws a TypeError; returns undefined.
Napi::Value ThrowType(Napi::Env env, const std::string& message);

// Argument readers: false (with a pending TypeError) when the argument has the wrong type.
bool ArgInt(const Napi::CallbackInfo& info, size_t i, const char* what, int64_t* out);
bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* what, std::string* out);
// A Buffer or any Uint8Array: pointer and length into the JavaScript memory (valid during the call).
bool ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* what, uint8_t** data, size_t* len);

// Closes an fd on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd = -1) : fd_(fd) {}
  ~FdGuard();
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Moves the calling thread into another network namespace and back: Enter() switches, the
// destructor always restores the original namespace (also on every error path). Only this thread
// moves; Node's other threads stay where they are.
class NetnsGuard {
 public:
  NetnsGuard() = default;
  ~NetnsGuard();
  NetnsGuard(const NetnsGuard&) = delete;
  NetnsGuard& operator=(const NetnsGuard&) = delete;
  // 0, or the errno of the step that failed (*failedOp names it).
  int Enter(const std::string& nsPath, std::string* failedOp);

 private:
  int orig_ = -1;
  bool entered_ = false;
};

// Collects libbpf's messages printed on this thread while alive (libbpf prints from the thread
// that calls it). Nested captures see only their own messages.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  const std::string& text() const { return text_; }
  void Append(const char* s) { text_ += s; }

 private:
  LogCapture* prev_;
  std::string text_;
};

// Installs the libbpf print callback (once, at module load).
void InstallLibbpfPrint();

// dup() with O_CLOEXEC; -1 with errno set on failure.
int DupFd(int fd);

}  // namespace weft
