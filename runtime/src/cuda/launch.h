// What every op on the CUDA execution provider shares: the artifact's fatbin, launched with
// the driver API on ONNX Runtime's compute stream (never synchronized by the shim).
#ifndef FFFC_CUDA_LAUNCH_H_
#define FFFC_CUDA_LAUNCH_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <fffc/cuda_table.h>

#include "../op_common.h"
#include "../ort_api.h"
#include "driver.h"

namespace fffc::cuda {

// The execution provider the CUDA kernels register for. Tests build a shim with
// FFFC_TEST_CUDA_ON_CPU: the CUDA kernels then run on the CPU EP (host buffers as "device"
// memory, tests/runtime/fake_cuda.cc as libcuda running the emulated kernels).
#ifdef FFFC_TEST_CUDA_ON_CPU
inline constexpr const char* kCudaEp = "CPUExecutionProvider";
#else
inline constexpr const char* kCudaEp = "CUDAExecutionProvider";
#endif

inline CUdeviceptr Ptr(const void* data) { return reinterpret_cast<CUdeviceptr>(data); }

// Scratch memory per stream, grown on demand; outgrown buffers are kept until destruction
// (kernels queued on the stream may still read them), so growing never synchronizes.
class Workspace {
 public:
  ~Workspace();
  // A device buffer of at least `bytes` for work queued on `stream`; "" or an error.
  std::string Get(const Driver* d, CUstream stream, size_t bytes, CUdeviceptr* out);

 private:
  struct Block {
    CUdeviceptr ptr = 0;
    size_t bytes = 0;
  };
  std::mutex mutex_;
  std::map<CUstream, Block> current_;
  std::vector<CUdeviceptr> retired_;
  const Driver* driver_ = nullptr;
};

// The variant of `fffc_cuda_kernels` at `index` for one call. `tensors` maps "X", "W1", ...,
// "Y" to device pointers (absent optional inputs omitted); `scalars` gives int32 parameters
// other than "N" (= tokens), e.g. RoutedFFN's sequence length "S". Returns "" or an error.
std::string Launch(int32_t index, const std::map<std::string, CUdeviceptr>& tensors,
                   int64_t tokens, CUstream stream, Workspace* workspace,
                   const std::map<std::string, int32_t>& scalars = {});

// The first entry of `op` with `mode` (and `activation` unless null) whose dims, token
// range and weight storage fit; `counted` picks the "counted_" variants (rows bounded by a
// device count). -1: none.
int32_t FindEntry(const char* op, const std::string& mode, const char* activation,
                  int32_t has_b1, int32_t has_b2, int64_t d_in, int64_t d_ff, int64_t d_out,
                  int64_t tokens, bool counted = false,
                  WeightDtype weight_dtype = WeightDtype::kFloat32);

// Whether the artifact has CUDA kernels of `op` (`uncounted_only`: other than "counted_"
// variants, which serve only as a RoutedFFN's FFN). An op is registered for the CUDA EP only
// then: without, ONNX Runtime assigns its nodes to the CPU EP's kernels.
bool Carries(const char* op, bool uncounted_only = false);

}  // namespace fffc::cuda

#endif  // FFFC_CUDA_LAUNCH_H_
