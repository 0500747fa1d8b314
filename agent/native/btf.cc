// BTF layout of a struct in an object file, so the TypeScript codecs can be checked against what
// clang actually laid out (sizes and member offsets).
#include <btf.h>

#include <cerrno>
#include <string>

#include "common.h"
#include "exports.h"

namespace weft {
namespace {

// btfStruct(objectPath, name) -> { name, size, members: [{ name, bitOffset, bitSize, size }] }
Napi::Value BtfStruct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path, name;
  if (!ArgString(info, 0, "path", &path) || !ArgString(info, 1, "name", &name)) return env.Undefined();
  LogCapture log;
  btf* b = btf__parse(path.c_str(), nullptr);
  if (b == nullptr) return ThrowErrno(env, errno, "btf__parse", path, {{"path", path}});
  int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_STRUCT);
  if (id < 0) id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_UNION);
  if (id < 0) {
    btf__free(b);
    return ThrowErrno(env, ENOENT, "btf__find_by_name_kind", "struct " + name + " in " + path, {{"path", path}});
  }
  const btf_type* t = btf__type_by_id(b, static_cast<__u32>(id));
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", name);
  out.Set("size", t->size);
  Napi::Array members = Napi::Array::New(env);
  const btf_member* m = btf_members(t);
  for (unsigned short i = 0; i < btf_vlen(t); i++, m++) {
    Napi::Object mo = Napi::Object::New(env);
    const char* mname = btf__name_by_offset(b, m->name_off);
    mo.Set("name", mname != nullptr ? mname : "");
    mo.Set("bitOffset", btf_member_bit_offset(t, i));
    mo.Set("bitSize", btf_member_bitfield_size(t, i));
    long long size = btf__resolve_size(b, m->type);
    mo.Set("size", static_cast<double>(size));
    members.Set(i, mo);
  }
  out.Set("members", members);
  btf__free(b);
  return out;
}

}  // namespace

void InitBtf(Napi::Env env, Napi::Object exports) { exports.Set("btfStruct", Napi::Function::New(env, BtfStruct, "btfStruct")); }

}  // namespace weft
