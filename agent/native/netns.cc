// Network-namespace helpers: the netns cookie of a namespace file, the cookie of a socket, and TCP
// sockets created (bound, optionally listening) inside another namespace and handed to Node as fds.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "exports.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif

namespace weft {
namespace {

// netnsCookie(nsPath) -> bigint: SO_NETNS_COOKIE of a socket made inside that namespace.
Napi::Value NetnsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "netnsPath", &path)) return env.Undefined();
  uint64_t cookie = 0;
  {
    NetnsGuard guard;
    std::string op;
    int err = guard.Enter(path, &op);
    if (err != 0) return ThrowErrno(env, err, op, path, {{"path", path}});
    FdGuard s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (s.get() < 0) return ThrowErrno(env, errno, "socket", "in " + path, {{"path", path}});
    socklen_t len = sizeof cookie;
    if (getsockopt(s.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) {
      return ThrowErrno(env, errno, "getsockopt SO_NETNS_COOKIE", path, {{"path", path}});
    }
  }
  return Napi::BigInt::New(env, cookie);
}

// socketCookie(fd) -> bigint (SO_COOKIE)
Napi::Value SocketCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (!ArgInt(info, 0, "fd", &fd)) return env.Undefined();
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_COOKIE, &cookie, &len) < 0) {
    return ThrowErrno(env, errno, "getsockopt SO_COOKIE", "fd " + std::to_string(fd));
  }
  return Napi::BigInt::New(env, cookie);
}

bool GetOpt(Napi::Object o, const char* key, std::string* out) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) return false;
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

int64_t GetInt(Napi::Object o, const char* key, int64_t dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int64Value() : dflt;
}

// createTcpSocket({ netns?, family: 4|6, host, port, backlog? (listen when >= 0), transparent?,
//                   reuseAddr?, reusePort? }) -> { fd, port }. Nonblocking and close-on-exec.
Napi::Value CreateTcpSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return ThrowType(env, "options must be an object");
  Napi::Object o = info[0].As<Napi::Object>();
  std::string netns, host;
  GetOpt(o, "netns", &netns);
  if (!GetOpt(o, "host", &host)) return ThrowType(env, "host must be a string");
  int family = GetInt(o, "family", 4) == 6 ? AF_INET6 : AF_INET;
  int64_t port = GetInt(o, "port", 0);
  int64_t backlog = GetInt(o, "backlog", -1);
  bool transparent = o.Get("transparent").ToBoolean().Value();
  bool reuseAddr = o.Get("reuseAddr").ToBoolean().Value();
  bool reusePort = o.Get("reusePort").ToBoolean().Value();
  if (port < 0 || port > 65535) return ThrowType(env, "port must be 0..65535");
  // portSearch { from, to, start }: with port 0, bind the first free port from `start` on, wrapping
  // within [from, to], instead of letting the kernel pick. The kernel's bind(port 0) scans its
  // half of the ephemeral range (odd ports) in full once more than half of it is taken: 2.3 ms a
  // socket with 15,000 of 28,232 ports bound, measured; an explicit bind is refused in about a
  // microsecond when its port is taken, so a cursor that moves on from the last port handed out
  // finds a free one in a few tries.
  // `skip`: [lo, hi, lo, hi, ...], ports never to take (ip_local_reserved_ports).
  int64_t searchFrom = 0, searchTo = -1, searchStart = 0;
  std::vector<std::pair<int64_t, int64_t>> skip;
  Napi::Value search = o.Get("portSearch");
  if (search.IsObject()) {
    Napi::Object so = search.As<Napi::Object>();
    searchFrom = GetInt(so, "from", 0);
    searchTo = GetInt(so, "to", -1);
    searchStart = GetInt(so, "start", searchFrom);
    Napi::Value sk = so.Get("skip");
    if (sk.IsArray()) {
      Napi::Array a = sk.As<Napi::Array>();
      for (uint32_t k = 0; k + 1 < a.Length(); k += 2) {
        skip.emplace_back(a.Get(k).ToNumber().Int64Value(), a.Get(k + 1).ToNumber().Int64Value());
      }
    }
    if (port != 0 || searchFrom < 1 || searchTo > 65535 || searchFrom > searchTo) {
      return ThrowType(env, "portSearch needs port 0 and 1 <= from <= to <= 65535");
    }
    if (searchStart < searchFrom || searchStart > searchTo) searchStart = searchFrom;
  }

  sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t slen;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1) return ThrowType(env, "not an IPv4 address: " + host);
    slen = sizeof *sin;
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) != 1) return ThrowType(env, "not an IPv6 address: " + host);
    slen = sizeof *sin6;
  }
  std::string where = host + ":" + std::to_string(port) + (netns.empty() ? "" : " in " + netns);
  Fields fields = {{"address", host}};
  if (!netns.empty()) fields.push_back({"path", netns});

  NetnsGuard guard;
  if (!netns.empty()) {
    std::string op;
    int err = guard.Enter(netns, &op);
    if (err != 0) return ThrowErrno(env, err, op, netns, fields);
  }
  FdGuard s(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return ThrowErrno(env, errno, "socket", where, fields);
  int one = 1;
  if (reuseAddr && setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    return ThrowErrno(env, errno, "setsockopt SO_REUSEADDR", where, fields);
  }
  if (reusePort && setsockopt(s.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    return ThrowErrno(env, errno, "setsockopt SO_REUSEPORT", where, fields);
  }
  if (transparent) {
    int level = family == AF_INET ? SOL_IP : SOL_IPV6;
    int name = family == AF_INET ? IP_TRANSPARENT : IPV6_TRANSPARENT;
    if (setsockopt(s.get(), level, name, &one, sizeof one) < 0) {
      return ThrowErrno(env, errno, "setsockopt IP_TRANSPARENT", where, fields);
    }
  }
  if (searchTo < 0) {
    if (bind(s.get(), reinterpret_cast<sockaddr*>(&ss), slen) < 0) return ThrowErrno(env, errno, "bind", where, fields);
  } else {
    int64_t span = searchTo - searchFrom + 1;
    int err = EADDRINUSE;
    for (int64_t i = 0; i < span && err == EADDRINUSE; i++) {
      int64_t port = searchFrom + (searchStart - searchFrom + i) % span;
      bool reserved = false;
      for (const auto& r : skip) reserved = reserved || (port >= r.first && port <= r.second);
      if (reserved) continue;
      uint16_t p = htons(static_cast<uint16_t>(port));
      if (family == AF_INET) reinterpret_cast<sockaddr_in*>(&ss)->sin_port = p;
      else reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = p;
      err = bind(s.get(), reinterpret_cast<sockaddr*>(&ss), slen) < 0 ? errno : 0;
    }
    if (err != 0) {
      return ThrowErrno(env, err == EADDRINUSE ? EADDRNOTAVAIL : err, "bind",
                        where + " (every port of " + std::to_string(searchFrom) + "-" + std::to_string(searchTo) + " is taken)", fields);
    }
  }
  if (backlog >= 0 && listen(s.get(), static_cast<int>(backlog)) < 0) {
    return ThrowErrno(env, errno, "listen", where, fields);
  }
  sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  if (getsockname(s.get(), reinterpret_cast<sockaddr*>(&bound), &blen) < 0) {
    return ThrowErrno(env, errno, "getsockname", where, fields);
  }
  uint16_t boundPort = family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                                         : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  Napi::Object out = Napi::Object::New(env);
  out.Set("port", boundPort);
  out.Set("fd", s.release());
  return out;
}

// localPortRange(netnsPath) -> { from, to, reserved }: net.ipv4.ip_local_port_range of that
// namespace and its ip_local_reserved_ports as written ("8080,9000-9010"), read from /proc/sys
// while this thread is inside it (/proc/sys/net shows the reader's namespace).
Napi::Value LocalPortRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "netnsPath", &path)) return env.Undefined();
  char buf[64] = {0};
  std::string reserved;
  {
    NetnsGuard guard;
    std::string op;
    int err = guard.Enter(path, &op);
    if (err != 0) return ThrowErrno(env, err, op, path, {{"path", path}});
    FdGuard f(open("/proc/sys/net/ipv4/ip_local_port_range", O_RDONLY | O_CLOEXEC));
    if (f.get() < 0) return ThrowErrno(env, errno, "open /proc/sys/net/ipv4/ip_local_port_range", path, {{"path", path}});
    if (read(f.get(), buf, sizeof buf - 1) < 0) return ThrowErrno(env, errno, "read ip_local_port_range", path, {{"path", path}});
    FdGuard r(open("/proc/sys/net/ipv4/ip_local_reserved_ports", O_RDONLY | O_CLOEXEC));
    if (r.get() >= 0) {
      char chunk[4096];
      ssize_t n;
      while ((n = read(r.get(), chunk, sizeof chunk)) > 0) reserved.append(chunk, static_cast<size_t>(n));
    }
  }
  unsigned from = 0, to = 0;
  if (sscanf(buf, "%u %u", &from, &to) != 2 || from < 1 || to > 65535 || from > to) {
    return ThrowType(env, std::string("cannot parse ip_local_port_range: ") + buf);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("from", Napi::Number::New(env, from));
  out.Set("to", Napi::Number::New(env, to));
  out.Set("reserved", Napi::String::New(env, reserved));
  return out;
}

}  // namespace

void InitNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie, "netnsCookie"));
  exports.Set("socketCookie", Napi::Function::New(env, SocketCookie, "socketCookie"));
  exports.Set("localPortRange", Napi::Function::New(env, LocalPortRange, "localPortRange"));
  exports.Set("createTcpSocket", Napi::Function::New(env, CreateTcpSocket, "createTcpSocket"));
}

}  // namespace weft
