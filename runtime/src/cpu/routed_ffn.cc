#include "routed_ffn.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

enum { kX = 0, kWR, kBR, kW1, kB1, kW2, kB2, kWA, kBA, kLS, kLB, kInputs };
const char* const kNames[kInputs] = {"X",  "WR", "BR", "W1", "B1", "W2",
                                     "B2", "WA", "BA", "LS", "LB"};

// Python's f"{v:g}" (fffc.ops.route_kernel_spec's LayerNorm epsilon tag).
std::string Compact(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  return buf;
}

// Three kernels per call: routing (scores, selection, gather of the selected rows), the
// dense FFN on the gathered rows only (the StructuredFFN dense kernel), the combine into Y.
struct RoutedKernel : KernelBase {
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    TensorView in[kInputs];
    bool present[kInputs] = {false};
    if (OrtStatus* st = ViewInputs(api, ctx, kInputs, kNames, in, present)) return st;
    const auto& xd = in[kX].dims;
    if (xd.size() != 3)
      return Fail(api, "RoutedFFN: X must be [batch, sequence, d] (routing is over axis 1)");
    const int64_t b = xd[0], s = xd[1], d = xd[2], n = b * s;
    const auto &w1 = in[kW1].dims, &w2 = in[kW2].dims;
    if (in[kWR].dims.empty() || in[kWR].dims[0] != d || w1.size() != 2 || w1[0] != d ||
        w2.size() != 2 || w2[0] != w1[1] || w2[1] != d ||
        (present[kBR] && in[kBR].dims != std::vector<int64_t>{1}) ||
        (present[kB1] && in[kB1].dims != std::vector<int64_t>{w1[1]}) ||
        (present[kB2] && in[kB2].dims != std::vector<int64_t>{d}) ||
        (present[kWA] && in[kWA].dims != std::vector<int64_t>{d}) ||
        (present[kBA] && (!present[kWA] || in[kBA].dims != std::vector<int64_t>{1})) ||
        present[kLS] != present[kLB] ||
        (present[kLS] && (in[kLS].dims != std::vector<int64_t>{d} ||
                          in[kLB].dims != std::vector<int64_t>{d})))
      return Fail(api, "RoutedFFN: expected WR [d], BR [1], W1 [d, d_ff], B1 [d_ff], "
                       "W2 [d_ff, d], B2 [d], WA [d], BA [1], LS and LB [d] for X [.., .., " +
                           std::to_string(d) + "]");
    if (present[kWA] && attrs.selection != "threshold")
      return Fail(api, "RoutedFFN: a selection score WA is for selection threshold");
    const int64_t d_ff = w1[1];
    const bool topk = attrs.selection == "topk";
    const int64_t k = attrs.TopK(s);  // per call when k follows the sequence length
    if (topk && (s < k || k < 0))
      return Fail(api, "RoutedFFN: top-" + std::to_string(k) + " of a sequence of " +
                           std::to_string(s) + " tokens");
    OrtValue* yv = nullptr;
    if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, xd.data(), xd.size(), &yv)) return st;
    if (n == 0) return nullptr;
    void* y = nullptr;
    if (OrtStatus* st = api->GetTensorMutableData(yv, &y)) return st;

    // fffc.ops.route_kernel_spec's mode
    const std::string route_mode =
        "route_" + attrs.selection + "_k" +
        (!topk ? "0" : attrs.KFromLength() ? "var" : std::to_string(attrs.k)) + "_" +
        attrs.router + (present[kWA] ? (present[kBA] ? "_auxb" : "_aux") : "") +
        (present[kLS] ? "_ln" + Compact(attrs.epsilon) : "");
    const fffc_kernel_entry* route =
        FindKernel("RoutedFFN", route_mode, "none", present[kBR], present[kBA], d, 0, d, n);
    const fffc_kernel_entry* combine =
        FindKernel("RoutedFFN", "combine", "none", false, false, d, 0, d, n);
    if (route == nullptr || combine == nullptr)
      return Fail(api, "no compiled routing kernels for RoutedFFN(" + route_mode + ", d=" +
                           std::to_string(d) + ") (CPU) in this artifact");

    // scratch, uninitialized: the kernels write every entry they later read (pages past the
    // selected rows are never touched)
    std::unique_ptr<int32_t[]> idx(new int32_t[n]);
    std::unique_ptr<float[]> wt(new float[n]), xs(new float[n * d]), delta(new float[n * d]);
    std::vector<int32_t> cnt(1, 0);
    const int64_t x3[3] = {b, s, d}, n1[1] = {n}, one[1] = {1}, nd[2] = {n, d}, four[1] = {4};
    std::vector<DLTensor> t = {Dl(in[kX].data, x3, 3), Dl(in[kWR].data, in[kWR].dims.data(), 1)};
    if (present[kBR]) t.push_back(Dl(in[kBR].data, one, 1));
    if (present[kWA]) t.push_back(Dl(in[kWA].data, in[kWA].dims.data(), 1));
    if (present[kBA]) t.push_back(Dl(in[kBA].data, one, 1));
    if (present[kLS]) {
      t.push_back(Dl(in[kLS].data, in[kLS].dims.data(), 1));
      t.push_back(Dl(in[kLB].data, in[kLB].dims.data(), 1));
    }
    int32_t kn = static_cast<int32_t>(k);
    if (topk && attrs.KFromLength()) t.push_back(Dl(&kn, one, 1, true));
    t.push_back(Dl(idx.get(), n1, 1, true));
    t.push_back(Dl(wt.get(), n1, 1));
    t.push_back(Dl(cnt.data(), one, 1, true));
    t.push_back(Dl(xs.get(), nd, 2));
    if (OrtStatus* st = CallKernel(api, ctx, *route, t)) return st;

    const int64_t selected = cnt[0];
    if (selected < 0 || selected > n) return Fail(api, "RoutedFFN: routing kernel miscounted");
    if (selected > 0) {
      const std::string ffn_mode = "b1r" + std::to_string(d_ff) + "_b1r" + std::to_string(d);
      const fffc_kernel_entry* ffn = FindKernel("StructuredFFN", ffn_mode, attrs.activation,
                                          present[kB1], present[kB2], d, d_ff, d, selected);
      if (ffn == nullptr)
        return Fail(api, "no compiled FFN kernel for RoutedFFN(activation=" + attrs.activation +
                             ", d=" + std::to_string(d) + ", d_ff=" + std::to_string(d_ff) +
                             ") (CPU) in this artifact");
      const int64_t xs2[2] = {selected, d}, a1[3] = {1, d, d_ff}, a2[3] = {1, d_ff, d};
      std::vector<DLTensor> f = {Dl(xs.get(), xs2, 2), Dl(in[kW1].data, a1, 3)};
      if (present[kB1]) f.push_back(Dl(in[kB1].data, in[kB1].dims.data(), 1));
      f.push_back(Dl(in[kW2].data, a2, 3));
      if (present[kB2]) f.push_back(Dl(in[kB2].data, in[kB2].dims.data(), 1));
      f.push_back(Dl(delta.get(), xs2, 2));
      if (OrtStatus* st = CallKernel(api, ctx, *ffn, f)) return st;
    }
    std::vector<float> coef(attrs.coef, attrs.coef + 4);
    std::vector<DLTensor> c = {Dl(in[kX].data, nd, 2),       Dl(idx.get(), n1, 1, true),
                               Dl(wt.get(), n1, 1),         Dl(delta.get(), nd, 2),
                               Dl(cnt.data(), one, 1, true), Dl(coef.data(), four, 1),
                               Dl(y, nd, 2)};
    return CallKernel(api, ctx, *combine, c);
  }
};

}  // namespace

OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewRoutedFfnOp(api, "CPUExecutionProvider", MakeKernel<RoutedKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
