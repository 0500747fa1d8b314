// Operations on BPF file descriptors: the Fd owner class, object info, pins, links (cgroup, tcx),
// program attachment to sockmaps, and map element operations. Each function takes plain fd
// numbers; the TypeScript classes own the fds through Fd.
#include <bpf.h>
#include <fcntl.h>
#include <libbpf.h>
#include <linux/perf_event.h>
#include <net/if.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common.h"
#include "exports.h"

namespace weft {
namespace {

// Fd: owns one file descriptor and closes it in close() or, at the latest, when collected.
class Fd : public Napi::ObjectWrap<Fd> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Fd",
                       {
                           InstanceAccessor("fd", &Fd::GetFd, nullptr),
                           InstanceMethod("close", &Fd::Close),
                       });
  }

  explicit Fd(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Fd>(info) {
    int64_t fd;
    if (!ArgInt(info, 0, "fd", &fd)) return;
    fd_ = static_cast<int>(fd);
  }

  ~Fd() override {
    if (fd_ >= 0) close(fd_);
  }

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return info.Env().Undefined();
  }
  int fd_ = -1;
};

bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* fd) {
  int64_t v;
  if (!ArgInt(info, i, "fd", &v)) return false;
  if (v < 0) {
    ThrowErrno(info.Env(), EBADF, "fd", std::to_string(v));
    return false;
  }
  *fd = static_cast<int>(v);
  return true;
}

// progInfo(fd) -> { id, type, name, tag }
Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  bpf_prog_info pi;
  memset(&pi, 0, sizeof pi);
  __u32 len = sizeof pi;
  if (bpf_obj_get_info_by_fd(fd, &pi, &len) < 0) return ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "program");
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", pi.id);
  o.Set("type", pi.type);
  o.Set("name", std::string(pi.name, strnlen(pi.name, sizeof pi.name)));
  return o;
}

// mapInfo(fd) -> { id, type, name, keySize, valueSize, maxEntries, flags }
Napi::Value MapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  bpf_map_info mi;
  memset(&mi, 0, sizeof mi);
  __u32 len = sizeof mi;
  if (bpf_obj_get_info_by_fd(fd, &mi, &len) < 0) return ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "map");
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", mi.id);
  o.Set("type", mi.type);
  o.Set("name", std::string(mi.name, strnlen(mi.name, sizeof mi.name)));
  o.Set("keySize", mi.key_size);
  o.Set("valueSize", mi.value_size);
  o.Set("maxEntries", mi.max_entries);
  o.Set("flags", mi.map_flags);
  return o;
}

uint32_t U32At(const uint8_t* b, size_t off) {
  uint32_t v;
  memcpy(&v, b + off, sizeof v);
  return v;
}

// linkInfo(fd) -> { id, type, progId, cgroupId?, attachType?, ifindex?, netnsIno?, mapId? }
// Parsed from the raw struct bpf_link_info, whose union members for tcx, netkit and sockmap links
// are newer than the installed headers. Layout: type, id, prog_id (u32 each), union at offset 16.
Napi::Value LinkInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  alignas(8) uint8_t raw[256];
  memset(raw, 0, sizeof raw);
  __u32 len = sizeof raw;
  if (bpf_obj_get_info_by_fd(fd, raw, &len) < 0) return ThrowErrno(env, errno, "bpf_obj_get_info_by_fd", "link");
  uint32_t type = U32At(raw, 0);
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", type);
  o.Set("id", U32At(raw, 4));
  o.Set("progId", U32At(raw, 8));
  switch (type) {
    case BPF_LINK_TYPE_CGROUP: {
      uint64_t id;
      memcpy(&id, raw + 16, sizeof id);
      o.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(id)));
      o.Set("attachType", U32At(raw, 24));
      break;
    }
    case BPF_LINK_TYPE_NETNS:
      o.Set("netnsIno", U32At(raw, 16));
      o.Set("attachType", U32At(raw, 20));
      break;
    case BPF_LINK_TYPE_XDP:
      o.Set("ifindex", U32At(raw, 16));
      break;
    case WEFT_BPF_LINK_TYPE_TCX:
    case 13: /* BPF_LINK_TYPE_NETKIT */
      o.Set("ifindex", U32At(raw, 16));
      o.Set("attachType", U32At(raw, 20));
      break;
    case 14: /* BPF_LINK_TYPE_SOCKMAP */
      o.Set("mapId", U32At(raw, 16));
      o.Set("attachType", U32At(raw, 20));
      break;
    default:
      break;
  }
  return o;
}

// dupFd(fd) -> a close-on-exec duplicate the caller owns
Napi::Value DupFdFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int dup = DupFd(fd);
  if (dup < 0) return ThrowErrno(env, errno, "dup", "fd " + std::to_string(fd));
  return Napi::Number::New(env, dup);
}

// objGet(path) -> fd of a pinned object
Napi::Value ObjGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "path", &path)) return env.Undefined();
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) return ThrowErrno(env, errno, "bpf_obj_get", path, {{"path", path}});
  return Napi::Number::New(env, fd);
}

// objPin(fd, path)
Napi::Value ObjPin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  std::string path;
  if (!ArgFd(info, 0, &fd) || !ArgString(info, 1, "path", &path)) return env.Undefined();
  if (bpf_obj_pin(fd, path.c_str()) < 0) return ThrowErrno(env, errno, "bpf_obj_pin", path, {{"path", path}});
  return env.Undefined();
}

// linkCreateCgroup(progFd, cgroupPath, attachType) -> link fd
Napi::Value LinkCreateCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd;
  std::string path;
  int64_t type;
  if (!ArgFd(info, 0, &progFd) || !ArgString(info, 1, "cgroupPath", &path) || !ArgInt(info, 2, "attachType", &type)) {
    return env.Undefined();
  }
  FdGuard cg(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (cg.get() < 0) return ThrowErrno(env, errno, "open cgroup", path, {{"path", path}});
  int fd = bpf_link_create(progFd, cg.get(), static_cast<bpf_attach_type>(type), nullptr);
  if (fd < 0) return ThrowErrno(env, errno, "bpf_link_create", "cgroup " + path, {{"path", path}});
  return Napi::Number::New(env, fd);
}

// linkCreateNetns(progFd, netnsPath, attachType) -> link fd: a program attached to a network
// namespace (sk_lookup, flow dissector); the namespace is named by its file.
Napi::Value LinkCreateNetns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd;
  std::string path;
  int64_t type;
  if (!ArgFd(info, 0, &progFd) || !ArgString(info, 1, "netnsPath", &path) || !ArgInt(info, 2, "attachType", &type)) {
    return env.Undefined();
  }
  FdGuard ns(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.get() < 0) return ThrowErrno(env, errno, "open netns", path, {{"path", path}});
  int fd = bpf_link_create(progFd, ns.get(), static_cast<bpf_attach_type>(type), nullptr);
  if (fd < 0) return ThrowErrno(env, errno, "bpf_link_create", "netns " + path, {{"path", path}});
  return Napi::Number::New(env, fd);
}

// rawTracepointOpen(progFd, name) -> link fd: a raw_tracepoint program on the kernel tracepoint
// `name` (e.g. "sock_recv_length"), every CPU.
Napi::Value RawTracepointOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd;
  std::string name;
  if (!ArgFd(info, 0, &progFd) || !ArgString(info, 1, "name", &name)) return env.Undefined();
  int fd = bpf_raw_tracepoint_open(name.c_str(), progFd);
  if (fd < 0) return ThrowErrno(env, errno, "bpf_raw_tracepoint_open", name, {});
  return Napi::Number::New(env, fd);
}

// linkCreateTracepoint(progFd, tracepointId) -> link fd: a tracepoint program on the perf
// tracepoint event whose id tracefs gives (events/<category>/<name>/id). One perf event, any CPU:
// the program is attached to the tracepoint itself. The link holds the event; our fd goes.
Napi::Value LinkCreateTracepoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd;
  int64_t id;
  if (!ArgFd(info, 0, &progFd) || !ArgInt(info, 1, "tracepointId", &id)) return env.Undefined();
  struct perf_event_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.type = PERF_TYPE_TRACEPOINT;
  attr.size = sizeof(attr);
  attr.config = static_cast<__u64>(id);
  attr.sample_period = 1;
  attr.wakeup_events = 1;
  FdGuard pfd(static_cast<int>(syscall(__NR_perf_event_open, &attr, -1 /* any task */, 0 /* cpu */, -1, PERF_FLAG_FD_CLOEXEC)));
  if (pfd.get() < 0) return ThrowErrno(env, errno, "perf_event_open", "tracepoint " + std::to_string(id), {});
  int fd = bpf_link_create(progFd, pfd.get(), BPF_PERF_EVENT, nullptr);
  if (fd < 0) return ThrowErrno(env, errno, "bpf_link_create", "tracepoint " + std::to_string(id), {});
  return Napi::Number::New(env, fd);
}

// linkCreateTcx(progFd, ifname, attachType, netnsPath?) -> link fd. The interface name is
// resolved, and the link created, inside the given network namespace.
Napi::Value LinkCreateTcx(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd;
  std::string ifname, netns;
  int64_t type;
  if (!ArgFd(info, 0, &progFd) || !ArgString(info, 1, "ifname", &ifname) || !ArgInt(info, 2, "attachType", &type)) {
    return env.Undefined();
  }
  if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull() && !ArgString(info, 3, "netns", &netns)) {
    return env.Undefined();
  }
  NetnsGuard guard;
  if (!netns.empty()) {
    std::string op;
    int err = guard.Enter(netns, &op);
    if (err != 0) return ThrowErrno(env, err, op, netns, {{"path", netns}});
  }
  unsigned ifindex = if_nametoindex(ifname.c_str());
  if (ifindex == 0) {
    return ThrowErrno(env, errno, "if_nametoindex", ifname + (netns.empty() ? "" : " in " + netns),
                      {{"ifname", ifname}, {"path", netns}});
  }
  int fd = bpf_link_create(progFd, static_cast<int>(ifindex), static_cast<bpf_attach_type>(type), nullptr);
  if (fd < 0) return ThrowErrno(env, errno, "bpf_link_create", "tcx " + ifname, {{"ifname", ifname}, {"path", netns}});
  return Napi::Number::New(env, fd);
}

// linkUpdate(linkFd, newProgFd, oldProgFd?) — atomic replacement of the link's program.
Napi::Value LinkUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int linkFd, progFd;
  if (!ArgFd(info, 0, &linkFd) || !ArgFd(info, 1, &progFd)) return env.Undefined();
  LIBBPF_OPTS(bpf_link_update_opts, opts);
  if (info.Length() > 2 && info[2].IsNumber()) {
    int old;
    if (!ArgFd(info, 2, &old)) return env.Undefined();
    opts.old_prog_fd = static_cast<__u32>(old);
    opts.flags = BPF_F_REPLACE;
  }
  if (bpf_link_update(linkFd, progFd, &opts) < 0) return ThrowErrno(env, errno, "bpf_link_update", "");
  return env.Undefined();
}

Napi::Value LinkDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (bpf_link_detach(fd) < 0) return ThrowErrno(env, errno, "bpf_link_detach", "");
  return env.Undefined();
}

// progAttach(progFd, targetFd, attachType, flags)
Napi::Value ProgAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd, targetFd;
  int64_t type, flags = 0;
  if (!ArgFd(info, 0, &progFd) || !ArgFd(info, 1, &targetFd) || !ArgInt(info, 2, "attachType", &type)) {
    return env.Undefined();
  }
  if (info.Length() > 3 && !ArgInt(info, 3, "flags", &flags)) return env.Undefined();
  if (bpf_prog_attach(progFd, targetFd, static_cast<bpf_attach_type>(type), static_cast<unsigned>(flags)) < 0) {
    return ThrowErrno(env, errno, "bpf_prog_attach", "");
  }
  return env.Undefined();
}

// progDetach(progFd, targetFd, attachType)
Napi::Value ProgDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd, targetFd;
  int64_t type;
  if (!ArgFd(info, 0, &progFd) || !ArgFd(info, 1, &targetFd) || !ArgInt(info, 2, "attachType", &type)) {
    return env.Undefined();
  }
  if (bpf_prog_detach2(progFd, targetFd, static_cast<bpf_attach_type>(type)) < 0) {
    return ThrowErrno(env, errno, "bpf_prog_detach2", "");
  }
  return env.Undefined();
}

// mapLookup(fd, key, valueLen, flags) -> Buffer | undefined (ENOENT)
Napi::Value MapLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* key;
  size_t keyLen;
  int64_t valueLen, flags = 0;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "key", &key, &keyLen) || !ArgInt(info, 2, "valueLen", &valueLen)) {
    return env.Undefined();
  }
  if (info.Length() > 3 && !ArgInt(info, 3, "flags", &flags)) return env.Undefined();
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(valueLen));
  if (bpf_map_lookup_elem_flags(fd, key, value.Data(), static_cast<__u64>(flags)) < 0) {
    if (errno == ENOENT) return env.Undefined();
    return ThrowErrno(env, errno, "bpf_map_lookup_elem", "");
  }
  return value;
}

// mapLookupAndDelete(fd, key, valueLen) -> Buffer | undefined (ENOENT): one atomic step for hash
// maps (kernel >= 5.14), so two readers never both take the same entry.
Napi::Value MapLookupAndDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* key;
  size_t keyLen;
  int64_t valueLen;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "key", &key, &keyLen) || !ArgInt(info, 2, "valueLen", &valueLen)) {
    return env.Undefined();
  }
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(valueLen));
  if (bpf_map_lookup_and_delete_elem(fd, key, value.Data()) < 0) {
    if (errno == ENOENT) return env.Undefined();
    return ThrowErrno(env, errno, "bpf_map_lookup_and_delete_elem", "");
  }
  return value;
}

// mapUpdate(fd, key, value, flags)
Napi::Value MapUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t *key, *value;
  size_t keyLen, valueLen;
  int64_t flags = 0;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "key", &key, &keyLen) || !ArgBytes(info, 2, "value", &value, &valueLen)) {
    return env.Undefined();
  }
  if (info.Length() > 3 && !ArgInt(info, 3, "flags", &flags)) return env.Undefined();
  if (bpf_map_update_elem(fd, key, value, static_cast<__u64>(flags)) < 0) {
    return ThrowErrno(env, errno, "bpf_map_update_elem", "");
  }
  return env.Undefined();
}

// mapDelete(fd, key) -> boolean (false when the key was absent)
Napi::Value MapDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* key;
  size_t keyLen;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "key", &key, &keyLen)) return env.Undefined();
  if (bpf_map_delete_elem(fd, key) < 0) {
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    return ThrowErrno(env, errno, "bpf_map_delete_elem", "");
  }
  return Napi::Boolean::New(env, true);
}

// mapNextKey(fd, key | null, keyLen) -> Buffer | undefined (end of map)
Napi::Value MapNextKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t keyLen;
  uint8_t* key = nullptr;
  size_t len = 0;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 2, "keyLen", &keyLen)) return env.Undefined();
  if (!info[1].IsNull() && !info[1].IsUndefined() && !ArgBytes(info, 1, "key", &key, &len)) return env.Undefined();
  Napi::Buffer<uint8_t> next = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(keyLen));
  if (bpf_map_get_next_key(fd, key, next.Data()) < 0) {
    if (errno == ENOENT) return env.Undefined();
    return ThrowErrno(env, errno, "bpf_map_get_next_key", "");
  }
  return next;
}

// mapLookupBatch(fd, inBatch | null, keyLen, valueLen, count, tokenLen, delete)
//   -> { keys: Buffer, values: Buffer, count, next: Buffer, done: boolean }
Napi::Value MapLookupBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t keyLen, valueLen, count, tokenLen;
  uint8_t* in = nullptr;
  size_t inLen = 0;
  if (!ArgFd(info, 0, &fd) || !ArgInt(info, 2, "keyLen", &keyLen) || !ArgInt(info, 3, "valueLen", &valueLen) ||
      !ArgInt(info, 4, "count", &count) || !ArgInt(info, 5, "tokenLen", &tokenLen)) {
    return env.Undefined();
  }
  if (!info[1].IsNull() && !info[1].IsUndefined() && !ArgBytes(info, 1, "inBatch", &in, &inLen)) return env.Undefined();
  bool del = info.Length() > 6 && info[6].ToBoolean().Value();
  Napi::Buffer<uint8_t> keys = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(keyLen * count));
  Napi::Buffer<uint8_t> values = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(valueLen * count));
  Napi::Buffer<uint8_t> next = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(tokenLen));
  memset(next.Data(), 0, next.Length());
  __u32 n = static_cast<__u32>(count);
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  int r = del ? bpf_map_lookup_and_delete_batch(fd, in, next.Data(), keys.Data(), values.Data(), &n, &opts)
              : bpf_map_lookup_batch(fd, in, next.Data(), keys.Data(), values.Data(), &n, &opts);
  bool done = false;
  if (r < 0) {
    // ENOENT: the last batch (n holds how many it returned).
    if (errno != ENOENT) return ThrowErrno(env, errno, del ? "bpf_map_lookup_and_delete_batch" : "bpf_map_lookup_batch", "");
    done = true;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("keys", keys);
  o.Set("values", values);
  o.Set("count", n);
  o.Set("next", next);
  o.Set("done", done);
  return o;
}

// mapUpdateBatch(fd, keys, values, count, flags) -> number updated
Napi::Value MapUpdateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t *keys, *values;
  size_t kl, vl;
  int64_t count, flags = 0;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "keys", &keys, &kl) || !ArgBytes(info, 2, "values", &values, &vl) ||
      !ArgInt(info, 3, "count", &count)) {
    return env.Undefined();
  }
  if (info.Length() > 4 && !ArgInt(info, 4, "flags", &flags)) return env.Undefined();
  __u32 n = static_cast<__u32>(count);
  LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = static_cast<__u64>(flags));
  if (bpf_map_update_batch(fd, keys, values, &n, &opts) < 0) {
    Napi::Error e = ErrnoError(env, errno, "bpf_map_update_batch", "");
    e.Value().Set("count", n);
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, n);
}

// mapDeleteBatch(fd, keys, count) -> number deleted
Napi::Value MapDeleteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* keys;
  size_t kl;
  int64_t count;
  if (!ArgFd(info, 0, &fd) || !ArgBytes(info, 1, "keys", &keys, &kl) || !ArgInt(info, 2, "count", &count)) {
    return env.Undefined();
  }
  __u32 n = static_cast<__u32>(count);
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  if (bpf_map_delete_batch(fd, keys, &n, &opts) < 0) {
    Napi::Error e = ErrnoError(env, errno, "bpf_map_delete_batch", "");
    e.Value().Set("count", n);
    e.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, n);
}

Napi::Value PossibleCpus(const Napi::CallbackInfo& info) {
  int n = libbpf_num_possible_cpus();
  if (n < 0) return ThrowErrno(info.Env(), -n, "libbpf_num_possible_cpus", "");
  return Napi::Number::New(info.Env(), n);
}

}  // namespace

void InitFdOps(Napi::Env env, Napi::Object exports) {
  exports.Set("Fd", Fd::Define(env));
  exports.Set("progInfo", Napi::Function::New(env, ProgInfo, "progInfo"));
  exports.Set("mapInfo", Napi::Function::New(env, MapInfo, "mapInfo"));
  exports.Set("linkInfo", Napi::Function::New(env, LinkInfo, "linkInfo"));
  exports.Set("dupFd", Napi::Function::New(env, DupFdFn, "dupFd"));
  exports.Set("objGet", Napi::Function::New(env, ObjGet, "objGet"));
  exports.Set("objPin", Napi::Function::New(env, ObjPin, "objPin"));
  exports.Set("linkCreateCgroup", Napi::Function::New(env, LinkCreateCgroup, "linkCreateCgroup"));
  exports.Set("linkCreateNetns", Napi::Function::New(env, LinkCreateNetns, "linkCreateNetns"));
  exports.Set("rawTracepointOpen", Napi::Function::New(env, RawTracepointOpen, "rawTracepointOpen"));
  exports.Set("linkCreateTracepoint", Napi::Function::New(env, LinkCreateTracepoint, "linkCreateTracepoint"));
  exports.Set("linkCreateTcx", Napi::Function::New(env, LinkCreateTcx, "linkCreateTcx"));
  exports.Set("linkUpdate", Napi::Function::New(env, LinkUpdate, "linkUpdate"));
  exports.Set("linkDetach", Napi::Function::New(env, LinkDetach, "linkDetach"));
  exports.Set("progAttach", Napi::Function::New(env, ProgAttach, "progAttach"));
  exports.Set("progDetach", Napi::Function::New(env, ProgDetach, "progDetach"));
  exports.Set("mapLookup", Napi::Function::New(env, MapLookup, "mapLookup"));
  exports.Set("mapLookupAndDelete", Napi::Function::New(env, MapLookupAndDelete, "mapLookupAndDelete"));
  exports.Set("mapUpdate", Napi::Function::New(env, MapUpdate, "mapUpdate"));
  exports.Set("mapDelete", Napi::Function::New(env, MapDelete, "mapDelete"));
  exports.Set("mapNextKey", Napi::Function::New(env, MapNextKey, "mapNextKey"));
  exports.Set("mapLookupBatch", Napi::Function::New(env, MapLookupBatch, "mapLookupBatch"));
  exports.Set("mapUpdateBatch", Napi::Function::New(env, MapUpdateBatch, "mapUpdateBatch"));
  exports.Set("mapDeleteBatch", Napi::Function::New(env, MapDeleteBatch, "mapDeleteBatch"));
  exports.Set("possibleCpus", Napi::Function::New(env, PossibleCpus, "possibleCpus"));
}

}  // namespace weft
