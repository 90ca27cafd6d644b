#include "tvm_backend.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

extern "C" {
// Hook signatures of tvm/runtime/c_backend_api.h.
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

// Weak function-pointer slots defined by every TVM llvm object; null until filled.
__attribute__((weak)) extern void* __TVMBackendParallelLaunch;
__attribute__((weak)) extern void* __TVMBackendAllocWorkspace;
__attribute__((weak)) extern void* __TVMBackendFreeWorkspace;
}

namespace fffc {
namespace {

thread_local std::string g_last_error;
thread_local const OrtApi* g_api = nullptr;
thread_local OrtKernelContext* g_ctx = nullptr;

int ConfiguredTasks() {
  if (const char* env = std::getenv("FFFC_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

struct Region {
  FTVMParallelLambda f;
  void* cdata;
  TVMParallelGroupEnv env;
  std::atomic<int> failed{0};
};

void RunTask(void* data, size_t task) {
  auto* r = static_cast<Region*>(data);
  if (r->f(static_cast<int>(task), &r->env, r->cdata) != 0) r->failed.store(-1);
}

// ORT's intra-op threads are the ones already awake (they spin between ops), so a pool
// of the shim's own would only compete with them for the same cores.
extern "C" int FffcParallelLaunch(FTVMParallelLambda f, void* cdata, int num_task) {
  if (num_task <= 0) num_task = ParallelTasks();
  Region region{f, cdata, {nullptr, num_task}};
  OrtKernelContext* ctx = std::exchange(g_ctx, nullptr);  // nested launches run inline
  if (ctx == nullptr || num_task == 1) {
    for (int i = 0; i < num_task; ++i) RunTask(&region, static_cast<size_t>(i));
  } else {
    OrtStatus* st = g_api->KernelContext_ParallelFor(ctx, RunTask, static_cast<size_t>(num_task),
                                                      0, &region);
    if (st != nullptr) {
      g_last_error = g_api->GetErrorMessage(st);
      g_api->ReleaseStatus(st);
      region.failed.store(-1);
    }
  }
  g_ctx = ctx;
  return region.failed.load();
}

// Per-thread cache of recently freed workspaces: kernels allocate the same scratch sizes
// call after call, and returning large blocks to the OS each time costs page faults.
// Each block carries its size in a 64-byte header in front of it.
constexpr size_t kHeader = 64;
constexpr size_t kCachedBlocks = 8;
struct Block {
  void* ptr;
  size_t size;
};
void ReleaseBlock(void* ptr) { std::free(static_cast<char*>(ptr) - kHeader); }
thread_local struct Cache {
  std::vector<Block> blocks;
  ~Cache() {
    for (auto& b : blocks) ReleaseBlock(b.ptr);
  }
} g_cache;

extern "C" void* FffcAllocWorkspace(int, int, uint64_t nbytes, int, int) {
  size_t size = std::max<size_t>(64, (static_cast<size_t>(nbytes) + 63) / 64 * 64);
  auto& blocks = g_cache.blocks;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].size >= size && blocks[i].size <= 4 * size) {
      void* p = blocks[i].ptr;
      blocks.erase(blocks.begin() + static_cast<long>(i));
      return p;
    }
  }
  void* raw = std::aligned_alloc(64, size + kHeader);
  if (raw == nullptr) return nullptr;
  *static_cast<size_t*>(raw) = size;
  return static_cast<char*>(raw) + kHeader;
}

extern "C" int FffcFreeWorkspace(int, int, void* ptr) {
  if (ptr == nullptr) return 0;
  size_t size = *reinterpret_cast<size_t*>(static_cast<char*>(ptr) - kHeader);
  auto& blocks = g_cache.blocks;
  if (blocks.size() >= kCachedBlocks) {
    auto smallest = std::min_element(blocks.begin(), blocks.end(),
                                     [](const Block& a, const Block& b) { return a.size < b.size; });
    ReleaseBlock(smallest->ptr);
    blocks.erase(smallest);
  }
  blocks.push_back({ptr, size});
  return 0;
}

}  // namespace

void InstallTvmBackend() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (&__TVMBackendParallelLaunch != nullptr)
      __TVMBackendParallelLaunch = reinterpret_cast<void*>(&FffcParallelLaunch);
    if (&__TVMBackendAllocWorkspace != nullptr)
      __TVMBackendAllocWorkspace = reinterpret_cast<void*>(&FffcAllocWorkspace);
    if (&__TVMBackendFreeWorkspace != nullptr)
      __TVMBackendFreeWorkspace = reinterpret_cast<void*>(&FffcFreeWorkspace);
  });
}

ParallelScope::ParallelScope(const OrtApi* api, OrtKernelContext* ctx) {
  g_api = api;
  g_ctx = ctx;
}

ParallelScope::~ParallelScope() { g_ctx = nullptr; }

std::string TakeLastKernelError() { return std::exchange(g_last_error, std::string()); }

int ParallelTasks() {
  static const int tasks = ConfiguredTasks();
  return tasks;
}

}  // namespace fffc

// Called by generated code on argument-check failures; the message goes back to ORT.
extern "C" void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts,
                                                  int32_t num_parts) {
  std::string msg = kind ? kind : "Error";
  msg += ": ";
  for (int32_t i = 0; i < num_parts; ++i) msg += parts[i] ? parts[i] : "";
  fffc::g_last_error = std::move(msg);
}
