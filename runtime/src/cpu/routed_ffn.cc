// ai.fffc::RoutedFFN (Mixture-of-Depths) on the CPU execution provider.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "../structured_call.h"
#include "ops.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

// Three kernels per call: routing (scores, selection, gather of the selected rows), the
// dense FFN on the gathered rows only (the StructuredFFN dense kernel), the combine into Y.
struct RoutedKernel : Kernel<RoutedAttrs> {
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    using In = Routed;
    RoutedCall c;
    if (OrtStatus* st = PrepareRouted(api, ctx, attrs, &c)) return st;
    widened.Apply(c.in, In::kNumInputs);  // 16-bit weights: float32 copies
    if (c.tokens == 0) return nullptr;
    const auto& in = c.in;
    const auto& present = c.present;
    const int64_t b = c.batch, s = c.seq, d = c.d, n = c.tokens;
    const fffc_kernel_entry* route =
        FindKernel(In::kName, c.route_mode, "none", present[In::kBR], present[In::kBA], d, 0, d,
                   n);
    const fffc_kernel_entry* combine =
        FindKernel(In::kName, "combine", "none", false, false, d, 0, d, n);
    if (route == nullptr || combine == nullptr)
      return Fail(api, "no compiled routing kernels for RoutedFFN(" + c.route_mode + ", d=" +
                           std::to_string(d) + ") (CPU) in this artifact");

    // scratch, uninitialized: the kernels write every entry they later read (pages past the
    // selected rows are never touched)
    std::unique_ptr<int32_t[]> idx(new int32_t[n]);
    std::unique_ptr<float[]> wt(new float[n]), xs(new float[n * d]), delta(new float[n * d]);
    std::vector<int32_t> cnt(1, 0);
    const int64_t x3[3] = {b, s, d}, n1[1] = {n}, one[1] = {1}, nd[2] = {n, d}, four[1] = {4};
    std::vector<DLTensor> t = {Dl(in[In::kX].data, x3, 3),
                               Dl(in[In::kWR].data, in[In::kWR].dims.data(), 1)};
    if (present[In::kBR]) t.push_back(Dl(in[In::kBR].data, one, 1));
    if (present[In::kWA]) t.push_back(Dl(in[In::kWA].data, in[In::kWA].dims.data(), 1));
    if (present[In::kBA]) t.push_back(Dl(in[In::kBA].data, one, 1));
    if (present[In::kLS]) {
      t.push_back(Dl(in[In::kLS].data, in[In::kLS].dims.data(), 1));
      t.push_back(Dl(in[In::kLB].data, in[In::kLB].dims.data(), 1));
    }
    int32_t kn = static_cast<int32_t>(c.k);
    if (c.topk && attrs.KFromLength()) t.push_back(Dl(&kn, one, 1, true));
    t.push_back(Dl(idx.get(), n1, 1, true));
    t.push_back(Dl(wt.get(), n1, 1));
    t.push_back(Dl(cnt.data(), one, 1, true));
    t.push_back(Dl(xs.get(), nd, 2));
    if (OrtStatus* st = CallKernel(api, ctx, *route, t)) return st;

    const int64_t selected = cnt[0];
    if (selected < 0 || selected > n) return Fail(api, "RoutedFFN: routing kernel miscounted");
    if (selected > 0) {
      const fffc_kernel_entry* ffn =
          FindKernel(Structured::kName, c.ffn_mode, Name(attrs.activation), present[In::kB1],
                     present[In::kB2], d, c.d_ff, d, selected);
      if (ffn == nullptr)
        return Fail(api, std::string("no compiled FFN kernel for RoutedFFN(activation=") +
                             Name(attrs.activation) + ", d=" + std::to_string(d) + ", d_ff=" +
                             std::to_string(c.d_ff) + ") (CPU) in this artifact");
      const int64_t xs2[2] = {selected, d}, a1[3] = {1, d, c.d_ff}, a2[3] = {1, c.d_ff, d};
      std::vector<DLTensor> f = {Dl(xs.get(), xs2, 2), Dl(in[In::kW1].data, a1, 3)};
      if (present[In::kB1]) f.push_back(Dl(in[In::kB1].data, in[In::kB1].dims.data(), 1));
      f.push_back(Dl(in[In::kW2].data, a2, 3));
      if (present[In::kB2]) f.push_back(Dl(in[In::kB2].data, in[In::kB2].dims.data(), 1));
      f.push_back(Dl(delta.get(), xs2, 2));
      if (OrtStatus* st = CallKernel(api, ctx, *ffn, f)) return st;
    }
    std::vector<float> coef(attrs.coef, attrs.coef + 4);
    std::vector<DLTensor> m = {Dl(in[In::kX].data, nd, 2),       Dl(idx.get(), n1, 1, true),
                               Dl(wt.get(), n1, 1),          Dl(delta.get(), nd, 2),
                               Dl(cnt.data(), one, 1, true), Dl(coef.data(), four, 1),
                               Dl(c.y, nd, 2)};
    return CallKernel(api, ctx, *combine, m);
  }
};

}  // namespace

OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewRoutedFfnOp(api, kCpuEp, MakeKernel<RoutedKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
