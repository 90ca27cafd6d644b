// ai.fffc::StructuredFFN on the CUDA execution provider.
#include <map>
#include <string>

#include "../op_common.h"
#include "../structured_call.h"
#include "launch.h"
#include "ops.h"

namespace fffc::cuda {
namespace {

// The structured path on the device (the pre-merged dense path is a CPU-only dispatch: a
// CUDA artifact has merged_max_tokens 0).
struct CudaStructuredKernel : Kernel<StructuredAttrs> {
  Workspace workspace;

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    using In = Structured;
    StructuredCall c;
    if (OrtStatus* st = PrepareStructured(api, ctx, attrs, &c)) return st;
    if (c.tokens == 0) return nullptr;
    if (c.merged) return Fail(api, "StructuredFFN: no pre-merged path on CUDA (merged_max_tokens "
                                   "must be 0 in a CUDA artifact)");
    const int32_t index =
        FindEntry(In::kName, c.mode, Name(attrs.activation), c.present[In::kB1],
                  c.present[In::kB2], c.d_in, c.d_ff, c.d_out, c.tokens, false, c.weight_dtype);
    if (index < 0)
      return Fail(api, "no compiled kernel for " + DescribeStructured(attrs, c) + " (CUDA, " +
                           Name(c.weight_dtype) + " weights) in this artifact (" +
                           std::to_string(c.tokens) + " tokens)");
    void* stream = nullptr;
    if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;
    std::map<std::string, CUdeviceptr> tensors;
    for (int i : {In::kX, In::kA1, In::kU1, In::kB1, In::kA2, In::kU2, In::kB2, In::kS1, In::kS2})
      if (c.present[i]) tensors[In::kInputNames[i]] = Ptr(c.in[i].data);
    tensors["Y"] = reinterpret_cast<CUdeviceptr>(c.y);
    std::string err = Launch(index, tensors, c.tokens, stream, &workspace);
    return err.empty() ? nullptr : Fail(api, "StructuredFFN: " + err);
  }
};

}  // namespace

OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  if (!Carries(Structured::kName, /*uncounted_only=*/true)) return nullptr;
  static OrtCustomOp* op = NewStructuredFfnOp(api, kCudaEp, MakeKernel<CudaStructuredKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cuda
