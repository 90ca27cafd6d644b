// ai.fffc::FastFeedForward on the CPU execution provider.
#include <cstring>
#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "ops.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

struct FffKernel : Kernel<FffAttrs> {
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    FffCall c;
    if (OrtStatus* st = PrepareFff(api, ctx, &c)) return st;
    widened.Apply(c.in, Fff::kNumInputs);  // 16-bit weights: float32 copies
    if (c.tokens == 0) return nullptr;
    const fffc_kernel_entry* entry = nullptr;
    for (int32_t i = 0; i < fffc_num_kernels && entry == nullptr; ++i) {
      const fffc_kernel_entry& e = fffc_kernels[i];
      if (std::strcmp(e.op, Fff::kName) == 0 && attrs.table_mode == e.mode &&
          std::strcmp(Name(attrs.activation), e.activation) == 0 && e.d_in == c.d_in &&
          e.d_ff == c.nodes && e.d_out == c.d_out && e.min_tokens <= c.tokens &&
          c.tokens <= e.max_tokens)
        entry = &e;
    }
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for FastFeedForward(trees x depth = " +
                           attrs.table_mode + ", d_in=" + std::to_string(c.d_in) + ", nodes=" +
                           std::to_string(c.nodes) + ", d_out=" + std::to_string(c.d_out) +
                           ") (CPU) in this artifact");
    const int64_t x2[2] = {c.tokens, c.d_in}, y2[2] = {c.tokens, c.d_out};
    std::vector<DLTensor> t = {Dl(c.in[0].data, x2, 2), Dl(c.in[1].data, c.in[1].dims.data(), 2),
                               Dl(c.in[2].data, c.in[2].dims.data(), 1),
                               Dl(c.in[3].data, c.in[3].dims.data(), 2), Dl(c.y, y2, 2)};
    return CallKernel(api, ctx, *entry, t);
  }
};

}  // namespace

OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewFastFeedForwardOp(api, kCpuEp, MakeKernel<FffKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
