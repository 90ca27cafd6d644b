// ai.fffc::StructuredFFN on the CPU execution provider.
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "../structured_call.h"
#include "ops.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

struct StructuredKernel : Kernel<StructuredAttrs> {
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    using In = Structured;
    StructuredCall c;
    if (OrtStatus* st = PrepareStructured(api, ctx, attrs, &c)) return st;
    widened.Apply(c.in, In::kNumInputs);  // 16-bit weights: float32 copies
    if (c.tokens == 0) return nullptr;
    const fffc_kernel_entry* entry =
        FindKernel(In::kName, c.mode, Name(attrs.activation), c.present[In::kB1],
                   c.present[In::kB2], c.d_in, c.d_ff, c.d_out, c.tokens);
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for " + DescribeStructured(attrs, c) +
                           " (CPU) in this artifact (" + std::to_string(c.tokens) + " tokens)");
    const int64_t x2[2] = {c.tokens, c.d_in}, y2[2] = {c.tokens, c.d_out};
    const int64_t m1[3] = {1, c.d_in, c.d_ff}, m2[3] = {1, c.d_ff, c.d_out};
    std::vector<DLTensor> t;
    t.push_back(Dl(c.in[In::kX].data, x2, 2));
    auto add = [&](int i) {
      if (c.present[i])
        t.push_back(Dl(c.in[i].data, c.in[i].dims.data(), static_cast<int>(c.in[i].dims.size())));
    };
    if (c.merged) {
      t.push_back(Dl(c.in[In::kM1].data, m1, 3));
      add(In::kB1);
      t.push_back(Dl(c.in[In::kM2].data, m2, 3));
      add(In::kB2);
    } else {
      for (int i : {In::kA1, In::kS1, In::kU1, In::kB1, In::kA2, In::kS2, In::kU2, In::kB2}) add(i);
    }
    t.push_back(Dl(c.y, y2, 2));
    return CallKernel(api, ctx, *entry, t);
  }
};

}  // namespace

OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewStructuredFfnOp(api, kCpuEp, MakeKernel<StructuredKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
