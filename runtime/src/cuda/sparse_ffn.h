// ai.fffc::SparseFFN on the CUDA execution provider: the artifact's fatbin, launched with
// the driver API on ONNX Runtime's compute stream (never synchronized by the shim).
#ifndef FFFC_CUDA_SPARSE_FFN_H_
#define FFFC_CUDA_SPARSE_FFN_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <fffc/cuda_table.h>

#include "../ort_api.h"
#include "driver.h"

namespace fffc::cuda {

// Adds the CUDA kernels to `domain` (nothing when the artifact has none).
OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain);

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
// "Y" to device pointers (absent optional inputs omitted). Returns "" or an error.
std::string Launch(int32_t index, const std::map<std::string, CUdeviceptr>& tensors,
                   int64_t tokens, CUstream stream, Workspace* workspace);

}  // namespace fffc::cuda

#endif  // FFFC_CUDA_SPARSE_FFN_H_
