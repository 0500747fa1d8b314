// The memory of a Weft process (every part calls these through lib/sys/memory.ts): glibc's malloc
// statistics and malloc_trim, and the release of the file pages it maps without using them.
//
// The C heap: Node's buffers (socket reads, TLS records, HTTP/2 frames) come from malloc; after a
// bulk stream glibc keeps the freed chunks in its free lists, scattered between live ones, so the
// process stays at its high-water mark. malloc_trim(0) hands every whole free page back to the
// kernel (MADV_DONTNEED), not only the top of the heap as free() does (docs/PERFORMANCE.md, agent
// memory).
//
// The executable's pages: the node binary is about 100 MB of code and read-only data, of which
// start-up (module loading, the startup snapshot, TLS set-up, and the kernel's fault-around, which
// maps up to 16 cached neighbours of every page touched) leaves about 50 MB mapped in the process,
// though a running part uses about half of it. releaseFilePages() unmaps the pages of every
// read-only private file mapping the process has not modified (MADV_DONTNEED): they stay in the
// page cache, clean and shared, and the ones in use come back at the next touch as minor faults
// (no I/O), as after the kernel's own reclaim. What stays mapped is what the process uses, and RSS
// says so.
#include <malloc.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstring>
#include <vector>

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

// One mapping of /proc/self/smaps that may be released: read-only, private, backed by a file, and
// without anonymous (copy-on-write) pages, whose contents would be lost: relocated data made
// read-only after start (RELRO) has them and is never touched.
struct Mapping {
  unsigned long start = 0;
  unsigned long end = 0;
  bool candidate = false;
  unsigned long rssKb = 0;
  unsigned long anonKb = 0;
  bool locked = false;
};

bool Releasable(const Mapping& m) { return m.candidate && m.anonKb == 0 && !m.locked && m.end > m.start; }

// releaseFilePages() -> { mappings, bytes }: how many mappings were released, and the bytes they
// had resident before. Errors (no /proc) release nothing.
Napi::Value ReleaseFilePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double mappings = 0;
  double bytes = 0;
  std::vector<Mapping> found;
  FILE* f = std::fopen("/proc/self/smaps", "re");
  if (f != nullptr) {
    char line[4352];
    Mapping cur;
    bool have = false;
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      unsigned long start, end, offset, inode;
      char perms[8] = {0};
      char dev[16] = {0};
      int pathAt = 0;
      if (std::sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &start, &end, perms, &offset, dev, &inode, &pathAt) >= 6) {
        if (have) found.push_back(cur);
        cur = Mapping();
        have = true;
        cur.start = start;
        cur.end = end;
        const char* path = pathAt > 0 ? line + pathAt : "";
        // r--p or r-xp of a file on a filesystem: not /dev (device memory), not a memfd.
        cur.candidate = perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p' && inode != 0 && path[0] == '/' &&
                        std::strncmp(path, "/dev/", 5) != 0 && std::strncmp(path, "/memfd:", 7) != 0;
        continue;
      }
      unsigned long kb;
      if (std::sscanf(line, "Rss: %lu kB", &kb) == 1) cur.rssKb = kb;
      else if (std::sscanf(line, "Anonymous: %lu kB", &kb) == 1) cur.anonKb = kb;
      else if (std::sscanf(line, "Locked: %lu kB", &kb) == 1) cur.locked = kb != 0;
    }
    if (have) found.push_back(cur);
    std::fclose(f);
  }
  for (const Mapping& m : found) {
    if (!Releasable(m) || m.rssKb == 0) continue;
    if (madvise(reinterpret_cast<void*>(m.start), m.end - m.start, MADV_DONTNEED) != 0) continue;
    mappings += 1;
    bytes += static_cast<double>(m.rssKb) * 1024;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("mappings", Napi::Number::New(env, mappings));
  out.Set("bytes", Napi::Number::New(env, bytes));
  return out;
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
  exports.Set("mallocInfo", Napi::Function::New(env, MallocInfo, "mallocInfo"));
  exports.Set("releaseFilePages", Napi::Function::New(env, ReleaseFilePages, "releaseFilePages"));
}

}  // namespace weft
