// The CUDA ops' shared launcher: the artifact's fatbin loaded once per context, kernel
// table lookups, per-stream scratch memory, launches on ONNX Runtime's compute stream.
#include "launch.h"

#include <climits>
#include <cstring>

namespace fffc::cuda {
namespace {

// The fatbin loaded once per CUDA context, with its functions by name.
struct Module {
  CUmodule module = nullptr;
  std::map<std::string, CUfunction> functions;
};

std::string Function(const Driver* d, const char* name, CUfunction* out) {
  static std::mutex mutex;
  static std::map<CUcontext, Module> modules;
  CUcontext ctx = nullptr;
  if (CUresult r = d->cuCtxGetCurrent(&ctx); r != 0) return Error(d, "cuCtxGetCurrent", r);
  if (ctx == nullptr) return "no current CUDA context on this thread";
  std::lock_guard<std::mutex> lock(mutex);
  Module& m = modules[ctx];
  if (m.module == nullptr) {
    if (CUresult r = d->cuModuleLoadData(&m.module, fffc_cuda_fatbin); r != 0) {
      m.module = nullptr;
      return Error(d, "cuModuleLoadData (the artifact's fatbin has no code for this GPU?)", r);
    }
  }
  auto it = m.functions.find(name);
  if (it == m.functions.end()) {
    CUfunction f = nullptr;
    if (CUresult r = d->cuModuleGetFunction(&f, m.module, name); r != 0)
      return Error(d, "cuModuleGetFunction", r) + " for " + name;
    it = m.functions.emplace(name, f).first;
  }
  *out = it->second;
  return "";
}

int64_t Extent(const fffc_cuda_dim& dim, int64_t tokens) {
  return (dim.a * tokens + dim.b) / dim.c;
}

}  // namespace

Workspace::~Workspace() {
  if (driver_ == nullptr) return;
  for (auto& [stream, block] : current_) driver_->cuMemFree(block.ptr);
  for (CUdeviceptr p : retired_) driver_->cuMemFree(p);
}

std::string Workspace::Get(const Driver* d, CUstream stream, size_t bytes, CUdeviceptr* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  driver_ = d;
  Block& b = current_[stream];
  if (b.bytes < bytes) {
    CUdeviceptr p = 0;
    if (CUresult r = d->cuMemAlloc(&p, bytes); r != 0) return Error(d, "cuMemAlloc", r);
    if (b.ptr != 0) retired_.push_back(b.ptr);
    b = Block{p, bytes};
  }
  *out = b.ptr;
  return "";
}

int32_t FindEntry(const char* op, const std::string& mode, const char* activation,
                  int32_t has_b1, int32_t has_b2, int64_t d_in, int64_t d_ff, int64_t d_out,
                  int64_t tokens, bool counted, WeightDtype weight_dtype) {
  for (int32_t i = 0; i < fffc_num_cuda_kernels; ++i) {
    const fffc_cuda_entry& e = fffc_cuda_kernels[i];
    if (std::string(e.op) == op && e.mode == mode &&
        (activation == nullptr || std::string(e.activation) == activation) &&
        e.has_b1 == has_b1 && e.has_b2 == has_b2 && e.d_in == d_in && e.d_ff == d_ff &&
        e.d_out == d_out && e.min_tokens <= tokens && tokens <= e.max_tokens &&
        (std::string(e.variant).rfind("counted_", 0) == 0) == counted &&
        std::strcmp(e.weight_dtype, Name(weight_dtype)) == 0)
      return i;
  }
  return -1;
}

std::string Launch(int32_t index, const std::map<std::string, CUdeviceptr>& tensors,
                   int64_t tokens, CUstream stream, Workspace* workspace,
                   const std::map<std::string, int32_t>& scalars) {
  std::string why;
  const Driver* d = GetDriver(&why);
  if (d == nullptr) return why;
  if (tokens <= 0 || tokens > INT_MAX) return "token count out of range";
  const fffc_cuda_entry& e = fffc_cuda_kernels[index];
  std::map<std::string, CUdeviceptr> buffers = tensors;
  size_t total = 0;
  for (int32_t i = 0; i < e.num_workspace; ++i)
    total += (static_cast<size_t>(e.workspace_per_token[i]) * tokens * 4 + 255) / 256 * 256;
  if (total > 0) {
    CUdeviceptr base = 0;
    if (std::string err = workspace->Get(d, stream, total, &base); !err.empty()) return err;
    for (int32_t i = 0; i < e.num_workspace; ++i) {
      buffers[e.workspace[i]] = base;
      base += (static_cast<size_t>(e.workspace_per_token[i]) * tokens * 4 + 255) / 256 * 256;
    }
  }
  std::map<std::string, int32_t> ints = scalars;
  ints["N"] = static_cast<int32_t>(tokens);
  for (int32_t l = 0; l < e.num_launches; ++l) {
    const fffc_cuda_launch& launch = e.launches[l];
    CUfunction f = nullptr;
    if (std::string err = Function(d, launch.kernel, &f); !err.empty()) return err;
    std::vector<CUdeviceptr> ptrs(launch.num_params);
    std::vector<void*> args(launch.num_params);
    for (int32_t p = 0; p < launch.num_params; ++p) {
      std::string name = launch.params[p];
      if (auto s = ints.find(name); s != ints.end()) {
        args[p] = &s->second;
        continue;
      }
      auto it = buffers.find(name);
      if (it == buffers.end()) return std::string(launch.kernel) + ": no buffer " + name;
      ptrs[p] = it->second;
      args[p] = &ptrs[p];
    }
    int64_t g[3];
    for (int i = 0; i < 3; ++i) g[i] = Extent(launch.grid[i], tokens);
    if (g[0] < 1 || g[1] < 1 || g[2] < 1 || g[0] > INT_MAX || g[1] > 65535 || g[2] > 65535)
      return std::string(launch.kernel) + ": grid out of range for " + std::to_string(tokens) +
             " tokens";
    if (CUresult r = d->cuLaunchKernel(f, static_cast<unsigned>(g[0]), static_cast<unsigned>(g[1]),
                                       static_cast<unsigned>(g[2]), launch.block[0],
                                       launch.block[1], launch.block[2], 0, stream, args.data(),
                                       nullptr);
        r != 0)
      return Error(d, "cuLaunchKernel", r) + " for " + launch.kernel;
  }
  return "";
}

bool Carries(const char* op, bool uncounted_only) {
  for (int32_t i = 0; i < fffc_num_cuda_kernels; ++i)
    if (std::string(fffc_cuda_kernels[i].op) == op &&
        !(uncounted_only && std::string(fffc_cuda_kernels[i].variant).rfind("counted_", 0) == 0))
      return true;
  return false;
}

}  // namespace fffc::cuda
