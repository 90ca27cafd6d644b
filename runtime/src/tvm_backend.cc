#include "tvm_backend.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FFFC_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FFFC_PAUSE() asm volatile("yield")
#else
#define FFFC_PAUSE() std::this_thread::yield()
#endif

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
thread_local bool g_in_pool_task = false;

int ConfiguredThreads() {
  if (const char* env = std::getenv("FFFC_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// One launch at a time. Tasks are claimed from one atomic word holding
// (generation, task count, next task), so a worker that wakes late for a finished launch
// can never claim work: its claim fails on the generation. The launching thread runs
// tasks too and only waits for tasks that were claimed, never for a worker that has not
// woken (on a busy machine it may simply do all the work itself). A launch that finds the
// pool busy (a concurrent session.run, or a nested launch) runs inline on its caller.
class Pool {
 public:
  explicit Pool(int threads) : threads_(std::max(1, threads)) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int threads() const { return threads_; }

  int Launch(FTVMParallelLambda f, void* cdata, int num_task) {
    if (num_task <= 0) num_task = threads_;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || g_in_pool_task || workers_.empty() || num_task == 1 ||
        num_task >= kMaxTasks) {
      return RunInline(f, cdata, num_task);
    }
    f_ = f;
    cdata_ = cdata;
    failed_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & kGenMask;
    {
      std::lock_guard<std::mutex> lk(m_);
      state_.store(Pack(generation_, num_task, 0), std::memory_order_release);
    }
    cv_.notify_all();
    RunTasks(generation_);
    for (int spin = 0; done_.load(std::memory_order_acquire) < num_task; ++spin) {
      if (spin < 4096) {
        FFFC_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
    return failed_.load(std::memory_order_relaxed);
  }

 private:
  static constexpr uint64_t kGenMask = (1ull << 24) - 1;
  static constexpr int kMaxTasks = 1 << 20;
  static uint64_t Pack(uint64_t gen, uint64_t n, uint64_t next) {
    return (gen << 40) | (n << 20) | next;
  }
  static uint64_t Gen(uint64_t s) { return s >> 40; }
  static int Count(uint64_t s) { return static_cast<int>((s >> 20) & (kMaxTasks - 1)); }
  static int Next(uint64_t s) { return static_cast<int>(s & (kMaxTasks - 1)); }

  static int RunInline(FTVMParallelLambda f, void* cdata, int num_task) {
    TVMParallelGroupEnv env{nullptr, num_task};
    for (int i = 0; i < num_task; ++i) {
      if (int rc = f(i, &env, cdata)) return rc;
    }
    return 0;
  }

  // Claims and runs tasks of generation `gen` until none is left.
  void RunTasks(uint64_t gen) {
    const bool outer = g_in_pool_task;
    g_in_pool_task = true;
    uint64_t s = state_.load(std::memory_order_acquire);
    while (Gen(s) == gen && Next(s) < Count(s)) {
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
      TVMParallelGroupEnv env{nullptr, Count(s)};
      if (f_(Next(s), &env, cdata_) != 0) failed_.store(-1, std::memory_order_relaxed);
      done_.fetch_add(1, std::memory_order_release);
      s = state_.load(std::memory_order_acquire);
    }
    g_in_pool_task = outer;
  }

  void WorkerLoop() {
    uint64_t seen = Gen(state_.load());
    for (;;) {
      for (int spin = 0; spin < 2048 && Gen(state_.load(std::memory_order_acquire)) == seen &&
                         !stop_.load(std::memory_order_relaxed);
           ++spin) {
        FFFC_PAUSE();
      }
      if (Gen(state_.load(std::memory_order_acquire)) == seen) {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_.load() || Gen(state_.load()) != seen; });
      }
      if (stop_.load()) return;
      seen = Gen(state_.load(std::memory_order_acquire));
      RunTasks(seen);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex busy_;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  std::atomic<int> failed_{0};
  uint64_t generation_ = 0;  // written only by the launching thread (under busy_)
  FTVMParallelLambda f_ = nullptr;
  void* cdata_ = nullptr;
};

Pool& GetPool() {
  static Pool pool(ConfiguredThreads());
  return pool;
}

// Per-thread cache of recently freed workspaces: kernels allocate the same scratch sizes
// call after call, and returning large blocks to the OS each time costs page faults.
struct Block {
  void* ptr;
  size_t size;
};
constexpr size_t kCachedBlocks = 8;
thread_local struct Cache {
  std::vector<Block> blocks;
  ~Cache() {
    for (auto& b : blocks) std::free(static_cast<char*>(b.ptr) - 64);
  }
} g_cache;

extern "C" int FffcParallelLaunch(FTVMParallelLambda f, void* cdata, int num_task) {
  return GetPool().Launch(f, cdata, num_task);
}

extern "C" void* FffcAllocWorkspace(int, int, uint64_t nbytes, int, int) {
  size_t size = (static_cast<size_t>(nbytes) + 63) / 64 * 64;
  if (size == 0) size = 64;
  auto& blocks = g_cache.blocks;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i].size >= size && blocks[i].size <= 4 * size) {
      void* p = blocks[i].ptr;
      blocks.erase(blocks.begin() + static_cast<long>(i));
      return p;
    }
  }
  // Size header in front of the block so that free knows what it caches.
  void* raw = std::aligned_alloc(64, size + 64);
  if (raw == nullptr) return nullptr;
  *static_cast<size_t*>(raw) = size;
  return static_cast<char*>(raw) + 64;
}

extern "C" int FffcFreeWorkspace(int, int, void* ptr) {
  if (ptr == nullptr) return 0;
  void* raw = static_cast<char*>(ptr) - 64;
  size_t size = *static_cast<size_t*>(raw);
  auto& blocks = g_cache.blocks;
  if (blocks.size() >= kCachedBlocks) {
    auto smallest = std::min_element(blocks.begin(), blocks.end(),
                                     [](const Block& a, const Block& b) { return a.size < b.size; });
    std::free(static_cast<char*>(smallest->ptr) - 64);
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

std::string TakeLastKernelError() { return std::exchange(g_last_error, std::string()); }

int PoolThreads() { return GetPool().threads(); }

}  // namespace fffc

// Called by generated code on argument-check failures; the message goes back to ORT.
extern "C" void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts,
                                                  int32_t num_parts) {
  std::string msg = kind ? kind : "Error";
  msg += ": ";
  for (int32_t i = 0; i < num_parts; ++i) msg += parts[i] ? parts[i] : "";
  fffc::g_last_error = std::move(msg);
}
