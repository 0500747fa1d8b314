// BpfObject: owns one libbpf `struct bpf_object` (an opened, then loaded, ELF object file).
// Programs and maps leave it as dup()ed fds, so the JavaScript side can keep a map or program
// after the object is closed and every fd has exactly one owner.
#include <libbpf.h>

#include <cerrno>
#include <string>

#include "common.h"
#include "exports.h"

namespace weft {
namespace {

const char kLogBegin[] = "-- BEGIN PROG LOAD LOG --\n";
const char kLogEnd[] = "-- END PROG LOAD LOG --";

class ObjectHandle : public Napi::ObjectWrap<ObjectHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BpfObject",
                       {
                           InstanceMethod("load", &ObjectHandle::Load),
                           InstanceMethod("programs", &ObjectHandle::Programs),
                           InstanceMethod("maps", &ObjectHandle::Maps),
                           InstanceMethod("programFd", &ObjectHandle::ProgramFd),
                           InstanceMethod("mapFd", &ObjectHandle::MapFd),
                           InstanceMethod("close", &ObjectHandle::Close),
                       });
  }

  // new BpfObject(path, pinRoot?)
  explicit ObjectHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ObjectHandle>(info) {
    Napi::Env env = info.Env();
    if (!ArgString(info, 0, "path", &path_)) return;
    std::string pinRoot;
    if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) {
      if (!ArgString(info, 1, "pinRoot", &pinRoot)) return;
    }
    LIBBPF_OPTS(bpf_object_open_opts, opts);
    if (!pinRoot.empty()) opts.pin_root_path = pinRoot.c_str();
    LogCapture log;
    errno = 0;
    bpf_object* obj = bpf_object__open_file(path_.c_str(), &opts);
    if (obj == nullptr) {
      // libbpf >= 1.0 returns NULL and sets errno.
      int e = errno != 0 ? errno : EINVAL;
      Napi::Error error = ErrnoError(env, e, "bpf_object__open_file", path_, {{"path", path_}});
      error.Value().Set("libbpfLog", log.text());
      error.ThrowAsJavaScriptException();
      return;
    }
    obj_ = obj;
  }

  ~ObjectHandle() override { Release(); }

 private:
  void Release() {
    if (obj_ != nullptr) bpf_object__close(obj_);
    obj_ = nullptr;
  }

  bool Check(Napi::Env env) {
    if (obj_ != nullptr) return true;
    ThrowErrno(env, EBADF, "bpf_object", path_ + " (closed)", {{"path", path_}});
    return false;
  }

  Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    LogCapture log;
    int err = bpf_object__load(obj_);
    if (err == 0) return env.Undefined();
    Napi::Error error = ErrnoError(env, err, "bpf_object__load", path_, {{"path", path_}});
    Napi::Object o = error.Value();
    const std::string& text = log.text();
    o.Set("libbpfLog", text);
    size_t begin = text.find(kLogBegin);
    if (begin != std::string::npos) {
      // libbpf prints "prog 'NAME': -- BEGIN PROG LOAD LOG --\n<kernel log>-- END PROG LOAD LOG --".
      size_t start = begin + sizeof(kLogBegin) - 1;
      size_t end = text.find(kLogEnd, start);
      o.Set("verifierLog", text.substr(start, end == std::string::npos ? std::string::npos : end - start));
      size_t line = text.rfind('\n', begin);
      line = line == std::string::npos ? 0 : line + 1;
      size_t q1 = text.find('\'', line);
      size_t q2 = q1 == std::string::npos ? q1 : text.find('\'', q1 + 1);
      if (q2 != std::string::npos && q2 < begin) o.Set("program", text.substr(q1 + 1, q2 - q1 - 1));
    }
    error.ThrowAsJavaScriptException();
    return env.Undefined();
  }

  Napi::Value Programs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    bpf_program* prog;
    bpf_object__for_each_program(prog, obj_) {
      Napi::Object p = Napi::Object::New(env);
      p.Set("name", bpf_program__name(prog));
      p.Set("section", bpf_program__section_name(prog));
      p.Set("type", static_cast<double>(bpf_program__type(prog)));
      p.Set("expectedAttachType", static_cast<double>(bpf_program__expected_attach_type(prog)));
      p.Set("fd", bpf_program__fd(prog));
      out.Set(i++, p);
    }
    return out;
  }

  Napi::Value Maps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Check(env)) return env.Undefined();
    Napi::Array out = Napi::Array::New(env);
    uint32_t i = 0;
    bpf_map* map;
    bpf_object__for_each_map(map, obj_) {
      Napi::Object m = Napi::Object::New(env);
      m.Set("name", bpf_map__name(map));
      m.Set("type", static_cast<double>(bpf_map__type(map)));
      m.Set("keySize", bpf_map__key_size(map));
      m.Set("valueSize", bpf_map__value_size(map));
      m.Set("maxEntries", bpf_map__max_entries(map));
      m.Set("internal", bpf_map__is_internal(map));
      const char* pin = bpf_map__pin_path(map);
      if (pin != nullptr) m.Set("pinPath", pin);
      m.Set("fd", bpf_map__fd(map));
      out.Set(i++, m);
    }
    return out;
  }

  // A dup of the loaded program's fd; the caller owns it.
  Napi::Value ProgramFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "name", &name) || !Check(env)) return env.Undefined();
    bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
    if (prog == nullptr) {
      return ThrowErrno(env, ENOENT, "bpf_object__find_program_by_name", name + " in " + path_,
                        {{"program", name}, {"path", path_}});
    }
    int fd = bpf_program__fd(prog);
    if (fd < 0) {
      return ThrowErrno(env, EBADF, "bpf_program__fd", name + " (object not loaded)",
                        {{"program", name}, {"path", path_}});
    }
    int dup = DupFd(fd);
    if (dup < 0) return ThrowErrno(env, errno, "dup", name, {{"program", name}});
    return Napi::Number::New(env, dup);
  }

  Napi::Value MapFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name;
    if (!ArgString(info, 0, "name", &name) || !Check(env)) return env.Undefined();
    bpf_map* map = bpf_object__find_map_by_name(obj_, name.c_str());
    if (map == nullptr) {
      return ThrowErrno(env, ENOENT, "bpf_object__find_map_by_name", name + " in " + path_,
                        {{"map", name}, {"path", path_}});
    }
    int fd = bpf_map__fd(map);
    if (fd < 0) {
      return ThrowErrno(env, EBADF, "bpf_map__fd", name + " (object not loaded)", {{"map", name}, {"path", path_}});
    }
    int dup = DupFd(fd);
    if (dup < 0) return ThrowErrno(env, errno, "dup", name, {{"map", name}});
    return Napi::Number::New(env, dup);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Release();
    return info.Env().Undefined();
  }

  bpf_object* obj_ = nullptr;
  std::string path_;
};

}  // namespace

void InitObject(Napi::Env env, Napi::Object exports) { exports.Set("BpfObject", ObjectHandle::Define(env)); }

}  // namespace weft
