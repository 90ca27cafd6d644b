#include "structured_ffn.h"

#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

enum { kX = 0, kA1, kU1, kB1, kA2, kU2, kB2, kM1, kM2, kS1, kS2, kInputs };
const char* const kNames[kInputs] = {"X",  "A1", "U1", "B1", "A2", "U2",
                                     "B2", "M1", "M2", "S1", "S2"};

std::string Dims(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

struct StructuredKernel : KernelBase {
  // The kernel table's mode of a structured shape ("b<k1>r<r1>[u]_b<k2>r<r2>[u]",
  // fffc.ops.structured_kernel_spec); the merged path is "b1r<d_ff>_b1r<d_out>".
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    TensorView in[kInputs];
    bool present[kInputs] = {false};
    if (OrtStatus* st = ViewInputs(api, ctx, kInputs, kNames, in, present)) return st;
    const auto &xd = in[kX].dims, &a1 = in[kA1].dims, &a2 = in[kA2].dims;
    if (!present[kX] || !present[kA1] || !present[kA2] || xd.empty() || a1.size() != 3 ||
        a2.size() != 3)
      return Fail(api, "StructuredFFN: expected X [..., d_in], A1 [k1, p1, q1], A2 [k2, p2, q2]");
    const int64_t d_in = a1[0] * a1[1], r1 = a1[0] * a1[2], r2 = a2[0] * a2[2];
    // BlockShuffle: S [m, r/m, s] regroups the r block outputs into m blocks of s outputs
    auto shuffled = [&](int i, int64_t r) -> int64_t {
      if (!present[i]) return r;
      const auto& sd = in[i].dims;
      return (sd.size() == 3 && sd[0] * sd[1] == r) ? sd[0] * sd[2] : -1;
    };
    const int64_t w1 = shuffled(kS1, r1), w2 = shuffled(kS2, r2);
    const int64_t d_ff = present[kU1] ? in[kU1].dims.back() : w1;
    const int64_t d_out = present[kU2] ? in[kU2].dims.back() : w2;
    const bool chain =
        w1 > 0 && w2 > 0 && xd.back() == d_in && a2[0] * a2[1] == d_ff &&
        (!present[kU1] || (in[kU1].dims.size() == 2 && in[kU1].dims[0] == w1)) &&
        (!present[kU2] || (in[kU2].dims.size() == 2 && in[kU2].dims[0] == w2)) &&
        (!present[kB1] || in[kB1].dims == std::vector<int64_t>{d_ff}) &&
        (!present[kB2] || in[kB2].dims == std::vector<int64_t>{d_out});
    if (!chain)
      return Fail(api, "StructuredFFN: shapes do not chain: X " + Dims(xd) + ", A1 " + Dims(a1) +
                           (present[kU1] ? ", U1 " + Dims(in[kU1].dims) : "") + ", A2 " +
                           Dims(a2) + (present[kU2] ? ", U2 " + Dims(in[kU2].dims) : ""));
    int64_t tokens = 1;
    for (size_t i = 0; i + 1 < xd.size(); ++i) tokens *= xd[i];
    std::vector<int64_t> ydims(xd.begin(), xd.end());
    ydims.back() = d_out;
    OrtValue* yv = nullptr;
    if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &yv))
      return st;
    if (tokens == 0) return nullptr;
    void* y = nullptr;
    if (OrtStatus* st = api->GetTensorMutableData(yv, &y)) return st;

    const bool merged = tokens <= attrs.merged_max_tokens && present[kM1] && present[kM2];
    if (merged && (in[kM1].dims != std::vector<int64_t>{d_in, d_ff} ||
                   in[kM2].dims != std::vector<int64_t>{d_ff, d_out}))
      return Fail(api, "StructuredFFN: M1/M2 must be [d_in, d_ff] and [d_ff, d_out]");
    auto tag = [&](int i) {  // fffc.ops.structured_kernel_spec: "s<m>x<s>" of a BlockShuffle
      return present[i] ? "s" + std::to_string(in[i].dims[0]) + "x" + std::to_string(in[i].dims[2])
                        : std::string();
    };
    const std::string mode =
        merged ? "b1r" + std::to_string(d_ff) + "_b1r" + std::to_string(d_out)
               : "b" + std::to_string(a1[0]) + "r" + std::to_string(r1) + tag(kS1) +
                     (present[kU1] ? "u" : "") + "_b" + std::to_string(a2[0]) + "r" +
                     std::to_string(r2) + tag(kS2) + (present[kU2] ? "u" : "");
    const fffc_kernel_entry* entry = FindKernel("StructuredFFN", mode, attrs.activation,
                                                present[kB1], present[kB2], d_in, d_ff, d_out,
                                                tokens);
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for StructuredFFN(" + mode + ", activation=" +
                           attrs.activation + ", d_in=" + std::to_string(d_in) + ", d_ff=" +
                           std::to_string(d_ff) + ", d_out=" + std::to_string(d_out) +
                           ") (CPU) in this artifact (" + std::to_string(tokens) + " tokens)");
    const int64_t x2[2] = {tokens, d_in}, y2[2] = {tokens, d_out};
    const int64_t m1[3] = {1, d_in, d_ff}, m2[3] = {1, d_ff, d_out};
    std::vector<DLTensor> t;
    t.push_back(Dl(in[kX].data, x2, 2));
    auto add = [&](int i) {
      if (present[i])
        t.push_back(Dl(in[i].data, in[i].dims.data(), static_cast<int>(in[i].dims.size())));
    };
    if (merged) {
      t.push_back(Dl(in[kM1].data, m1, 3));
      add(kB1);
      t.push_back(Dl(in[kM2].data, m2, 3));
      add(kB2);
    } else {
      for (int i : {kA1, kS1, kU1, kB1, kA2, kS2, kU2, kB2}) add(i);
    }
    t.push_back(Dl(y, y2, 2));
    return CallKernel(api, ctx, *entry, t);
  }
};

}  // namespace

OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op =
      NewStructuredFfnOp(api, "CPUExecutionProvider", MakeKernel<StructuredKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
