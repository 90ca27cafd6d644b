// ai.fffc::SparseFFN on the CUDA execution provider.
#include <cstring>
#include <map>
#include <string>

#include "../op_common.h"
#include "launch.h"
#include "ops.h"

namespace fffc::cuda {
namespace {

struct CudaKernel : Kernel<SparseAttrs> {
  Workspace workspace;

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    FfnCall c;
    if (OrtStatus* st = Prepare(api, ctx, &c, attrs.mode, attrs.bits)) return st;
    if (c.tokens == 0) return nullptr;
    const std::string mode = TableMode(attrs, c, SparseTable::kCuda);
    int32_t index = -1;
    for (int32_t i = 0; i < fffc_num_cuda_kernels && index < 0; ++i) {
      const fffc_cuda_entry& e = fffc_cuda_kernels[i];
      if (std::strcmp(e.op, Sparse::kName) == 0 &&
          std::strcmp(e.weight_dtype, Name(c.weight_dtype)) == 0 &&
          Matches(attrs, c, mode, e.activation, e.up_activation, e.mode, e.has_b1, e.has_b2,
                  e.gated, e.d_in, e.d_ff, e.d_out, e.min_tokens, e.max_tokens))
        index = i;
    }
    if (index < 0)
      return Fail(api, "no compiled kernel for " + Describe(attrs, c, mode) + " (CUDA, " +
                           Name(c.weight_dtype) + " weights) in this artifact (" +
                           std::to_string(c.tokens) + " tokens)");
    void* stream = nullptr;
    if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;
    std::map<std::string, CUdeviceptr> tensors;
    for (int i = 0; i < Sparse::kNumInputs; ++i)
      if (c.present[i])
        tensors[Sparse::kInputNames[i]] = reinterpret_cast<CUdeviceptr>(c.in[i].data);
    tensors["Y"] = reinterpret_cast<CUdeviceptr>(c.y);
    std::string err = Launch(index, tensors, c.tokens, stream, &workspace);
    return err.empty() ? nullptr : Fail(api, fffc_cuda_kernels[index].variant + (": " + err));
  }
};

}  // namespace

OrtStatus* RegisterSparseFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  if (!Carries(Sparse::kName)) return nullptr;
  static OrtCustomOp* op = NewSparseFfnOp(api, kCudaEp, MakeKernel<CudaKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cuda
