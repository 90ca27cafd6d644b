// ai.fffc::FastFeedForward on the CUDA execution provider.
#include <cstring>
#include <map>
#include <string>

#include "../op_common.h"
#include "launch.h"
#include "ops.h"

namespace fffc::cuda {
namespace {

// FastFeedForward: X, W_in, B_in, W_out on the device; one launch (a block per token).
struct CudaFffKernel : Kernel<FffAttrs> {
  Workspace workspace;

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    FffCall c;
    if (OrtStatus* st = PrepareFff(api, ctx, &c)) return st;
    if (c.tokens == 0) return nullptr;
    int32_t index = -1;
    for (int32_t i = 0; i < fffc_num_cuda_kernels && index < 0; ++i) {
      const fffc_cuda_entry& e = fffc_cuda_kernels[i];
      if (std::strcmp(e.op, Fff::kName) == 0 && attrs.table_mode == e.mode &&
          std::strcmp(e.weight_dtype, Name(c.weight_dtype)) == 0 &&
          std::strcmp(Name(attrs.activation), e.activation) == 0 && e.d_in == c.d_in &&
          e.d_ff == c.nodes && e.d_out == c.d_out && e.min_tokens <= c.tokens &&
          c.tokens <= e.max_tokens)
        index = i;
    }
    if (index < 0)
      return Fail(api, "no compiled kernel for FastFeedForward(" + attrs.table_mode + ", d_in=" +
                           std::to_string(c.d_in) + ") (CUDA, " + Name(c.weight_dtype) +
                           " weights) in this artifact");
    void* stream = nullptr;
    if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;
    // the kernel's parameter names (fffc.ops.KernelSpec.arg_names), not SparseFFN's
    std::map<std::string, CUdeviceptr> tensors;
    for (int i = 0; i < Fff::kNumInputs; ++i)
      tensors[Fff::kInputNames[i]] = reinterpret_cast<CUdeviceptr>(c.in[i].data);
    tensors["Y"] = reinterpret_cast<CUdeviceptr>(c.y);
    std::string err = Launch(index, tensors, c.tokens, stream, &workspace);
    return err.empty() ? nullptr : Fail(api, "FastFeedForward: " + err);
  }
};

}  // namespace

OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain) {
  if (!Carries(Fff::kName)) return nullptr;
  static OrtCustomOp* op = NewFastFeedForwardOp(api, kCudaEp, MakeKernel<CudaFffKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cuda
