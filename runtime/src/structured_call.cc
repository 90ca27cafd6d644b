#include "structured_call.h"

#include <cstdio>
#include <vector>

namespace fffc {

namespace {

std::string Dims(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Python's f"{v:g}" (fffc.ops.route_kernel_spec's LayerNorm epsilon tag).
std::string Compact(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", static_cast<double>(v));
  return buf;
}

}  // namespace

OrtStatus* PrepareStructured(const OrtApi* api, OrtKernelContext* ctx, const StructuredAttrs& attrs,
                             StructuredCall* call) {
  using In = Structured;
  StructuredCall& c = *call;
  auto& in = c.in;
  auto& present = c.present;
  if (OrtStatus* st = ViewInputs(api, ctx, Structured::kContract, in, present))
    return st;
  const ONNXTensorElementDataType weights = WeightElementType(in, present, Structured::kContract);
  if (weights == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
    return Fail(api, "StructuredFFN: the weights differ in type");
  c.weight_dtype = StorageOf(weights);
  const auto &xd = in[In::kX].dims, &a1 = in[In::kA1].dims, &a2 = in[In::kA2].dims;
  if (!present[In::kX] || !present[In::kA1] || !present[In::kA2] || xd.empty() || a1.size() != 3 ||
      a2.size() != 3)
    return Fail(api, "StructuredFFN: expected X [..., d_in], A1 [k1, p1, q1], A2 [k2, p2, q2]");
  const int64_t d_in = a1[0] * a1[1], r1 = a1[0] * a1[2], r2 = a2[0] * a2[2];
  // BlockShuffle: S [m, r/m, s] regroups the r block outputs into m blocks of s outputs
  auto shuffled = [&](int i, int64_t r) -> int64_t {
    if (!present[i]) return r;
    const auto& sd = in[i].dims;
    return (sd.size() == 3 && sd[0] * sd[1] == r) ? sd[0] * sd[2] : -1;
  };
  const int64_t w1 = shuffled(In::kS1, r1), w2 = shuffled(In::kS2, r2);
  const int64_t d_ff = present[In::kU1] ? in[In::kU1].dims.back() : w1;
  const int64_t d_out = present[In::kU2] ? in[In::kU2].dims.back() : w2;
  const bool chain =
      w1 > 0 && w2 > 0 && xd.back() == d_in && a2[0] * a2[1] == d_ff &&
      (!present[In::kU1] || (in[In::kU1].dims.size() == 2 && in[In::kU1].dims[0] == w1)) &&
      (!present[In::kU2] || (in[In::kU2].dims.size() == 2 && in[In::kU2].dims[0] == w2)) &&
      (!present[In::kB1] || in[In::kB1].dims == std::vector<int64_t>{d_ff}) &&
      (!present[In::kB2] || in[In::kB2].dims == std::vector<int64_t>{d_out});
  if (!chain)
    return Fail(api, "StructuredFFN: shapes do not chain: X " + Dims(xd) + ", A1 " + Dims(a1) +
                         (present[In::kU1] ? ", U1 " + Dims(in[In::kU1].dims) : "") + ", A2 " +
                         Dims(a2) + (present[In::kU2] ? ", U2 " + Dims(in[In::kU2].dims) : ""));
  int64_t tokens = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) tokens *= xd[i];
  c.d_in = d_in, c.d_ff = d_ff, c.d_out = d_out, c.tokens = tokens;
  std::vector<int64_t> ydims(xd.begin(), xd.end());
  ydims.back() = d_out;
  OrtValue* yv = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &yv))
    return st;
  c.merged = tokens <= attrs.merged_max_tokens && present[In::kM1] && present[In::kM2];
  if (c.merged && (in[In::kM1].dims != std::vector<int64_t>{d_in, d_ff} ||
                   in[In::kM2].dims != std::vector<int64_t>{d_ff, d_out}))
    return Fail(api, "StructuredFFN: M1/M2 must be [d_in, d_ff] and [d_ff, d_out]");
  auto tag = [&](int i) {  // fffc.ops.structured_kernel_spec: "s<m>x<s>" of a BlockShuffle
    return present[i] ? "s" + std::to_string(in[i].dims[0]) + "x" + std::to_string(in[i].dims[2])
                      : std::string();
  };
  c.mode = c.merged ? "b1r" + std::to_string(d_ff) + "_b1r" + std::to_string(d_out)
                    : "b" + std::to_string(a1[0]) + "r" + std::to_string(r1) + tag(In::kS1) +
                          (present[In::kU1] ? "u" : "") + "_b" + std::to_string(a2[0]) + "r" +
                          std::to_string(r2) + tag(In::kS2) + (present[In::kU2] ? "u" : "");
  if (tokens == 0) return nullptr;
  return api->GetTensorMutableData(yv, &c.y);
}

std::string DescribeStructured(const StructuredAttrs& attrs, const StructuredCall& c) {
  return "StructuredFFN(" + c.mode + ", activation=" + Name(attrs.activation) + ", d_in=" +
         std::to_string(c.d_in) + ", d_ff=" + std::to_string(c.d_ff) + ", d_out=" +
         std::to_string(c.d_out) + ")";
}

OrtStatus* PrepareRouted(const OrtApi* api, OrtKernelContext* ctx, const RoutedAttrs& attrs,
                         RoutedCall* call) {
  using In = Routed;
  RoutedCall& c = *call;
  auto& in = c.in;
  auto& present = c.present;
  if (OrtStatus* st = ViewInputs(api, ctx, Routed::kContract, in, present)) return st;
  const ONNXTensorElementDataType weights = WeightElementType(in, present, Routed::kContract);
  if (weights == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
    return Fail(api, "RoutedFFN: W1 and W2 differ in type");
  c.weight_dtype = StorageOf(weights);
  const auto& xd = in[In::kX].dims;
  if (xd.size() != 3)
    return Fail(api, "RoutedFFN: X must be [batch, sequence, d] (routing is over axis 1)");
  const int64_t b = xd[0], s = xd[1], d = xd[2];
  const auto &w1 = in[In::kW1].dims, &w2 = in[In::kW2].dims;
  if (in[In::kWR].dims.empty() || in[In::kWR].dims[0] != d || w1.size() != 2 || w1[0] != d ||
      w2.size() != 2 || w2[0] != w1[1] || w2[1] != d ||
      (present[In::kBR] && in[In::kBR].dims != std::vector<int64_t>{1}) ||
      (present[In::kB1] && in[In::kB1].dims != std::vector<int64_t>{w1[1]}) ||
      (present[In::kB2] && in[In::kB2].dims != std::vector<int64_t>{d}) ||
      (present[In::kWA] && in[In::kWA].dims != std::vector<int64_t>{d}) ||
      (present[In::kBA] && (!present[In::kWA] || in[In::kBA].dims != std::vector<int64_t>{1})) ||
      present[In::kLS] != present[In::kLB] ||
      (present[In::kLS] && (in[In::kLS].dims != std::vector<int64_t>{d} ||
                         in[In::kLB].dims != std::vector<int64_t>{d})))
    return Fail(api, "RoutedFFN: expected WR [d], BR [1], W1 [d, d_ff], B1 [d_ff], "
                     "W2 [d_ff, d], B2 [d], WA [d], BA [1], LS and LB [d] for X [.., .., " +
                         std::to_string(d) + "]");
  if (present[In::kWA] && attrs.selection != Routed::Selection::kThreshold)
    return Fail(api, "RoutedFFN: a selection score WA is for selection threshold");
  c.batch = b, c.seq = s, c.d = d, c.d_ff = w1[1], c.tokens = b * s;
  c.topk = attrs.selection == Routed::Selection::kTopk;
  c.k = c.topk ? attrs.TopK(s) : 0;  // per call when k follows the sequence length
  if (c.topk && (s < c.k || c.k < 0))
    return Fail(api, "RoutedFFN: top-" + std::to_string(c.k) + " of a sequence of " +
                         std::to_string(s) + " tokens");
  // fffc.ops.route_kernel_spec's mode
  c.route_mode = std::string("route_") + Name(attrs.selection) + "_k" +
                 (!c.topk ? "0" : attrs.KFromLength() ? "var" : std::to_string(attrs.k)) + "_" +
                 Name(attrs.router) + (present[In::kWA] ? (present[In::kBA] ? "_auxb" : "_aux") : "") +
                 (present[In::kLS] ? "_ln" + Compact(attrs.epsilon) : "");
  c.ffn_mode = "b1r" + std::to_string(c.d_ff) + "_b1r" + std::to_string(d);
  OrtValue* yv = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, xd.data(), xd.size(), &yv)) return st;
  if (c.tokens == 0) return nullptr;
  return api->GetTensorMutableData(yv, &c.y);
}

}  // namespace fffc
