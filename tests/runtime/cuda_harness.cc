// Test-only entry points into the shim's CUDA launch path (no ONNX Runtime needed): linked
// into a separate library by tests and bench/bench_cuda.py, never into an artifact's shim.
#include <map>
#include <string>

#include "cuda/launch.h"

extern "C" int fffc_test_num_entries() { return fffc_num_cuda_kernels; }

extern "C" const char* fffc_test_entry(int index, long long* min_tokens, long long* max_tokens) {
  const fffc_cuda_entry& e = fffc_cuda_kernels[index];
  *min_tokens = e.min_tokens;
  *max_tokens = e.max_tokens;
  return e.variant;
}

// Runs entry `index` on `stream` with device pointers by name; returns "" or the error.
extern "C" const char* fffc_test_launch(int index, int count, const char** names,
                                        const unsigned long long* ptrs, long long tokens,
                                        void* stream) {
  static thread_local std::string error;
  static fffc::cuda::Workspace workspace;
  std::map<std::string, fffc::cuda::CUdeviceptr> tensors;
  for (int i = 0; i < count; ++i) tensors[names[i]] = ptrs[i];
  error = fffc::cuda::Launch(index, tensors, tokens, stream, &workspace);
  return error.c_str();
}
