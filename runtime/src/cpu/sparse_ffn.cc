// ai.fffc::SparseFFN on the CPU execution provider.
#include <cstring>
#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "ops.h"
#include "screen.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

// Shapes of an int4 or int8 call's kernel arguments (exact_q4.q4_arg_names,
// exact_q8.q8_arg_names): codes and scales per neuron row for W1 and WU (int4 mode teal: per
// input channel, `cols`), per neuron column group for W2; two codes (and W1Z, WUZ zero
// points) a byte with bits 4, one with bits 8.
struct Int4Shapes {
  int64_t rows[3], scales[2], zeros[2], w2[2], w2s[2], cols[2], cols_s[2];
  explicit Int4Shapes(const FfnCall& c) {
    cols[0] = c.d_in, cols[1] = c.d_ff / 2;
    cols_s[0] = c.d_in / c.block, cols_s[1] = c.d_ff;
    const int64_t kb = c.d_in / c.block, per_byte = c.bits == 8 ? 1 : 2;
    rows[0] = c.d_ff, rows[1] = kb, rows[2] = c.block / per_byte;
    scales[0] = c.d_ff, scales[1] = kb;
    zeros[0] = c.d_ff, zeros[1] = (kb + per_byte - 1) / per_byte;
    w2[0] = c.d_ff, w2[1] = c.d_out / per_byte;
    w2s[0] = c.d_ff / c.block, w2s[1] = c.d_out;
  }
};

constexpr DLDataType kU8{kDLUInt, 8, 1};

// The int4 kernel's arguments after X: W1, W1S, [W1Z], [B1], W2, W2S, [W2Z], [B2],
// [WU, WUS, [WUZ]], then the mode's [TH] or [PA, PB, PC], then [AQ] (the shapes point into `s`, which
// must outlive the call). `channels`: W1 and WU per input channel (mode teal).
void Int4Args(const FfnCall& c, const Int4Shapes& s, bool channels, std::vector<DLTensor>* t) {
  using In = Sparse;
  auto rows = [&](int w, int sc, int z) {
    if (channels) {
      t->push_back(Dl(c.in[w].data, s.cols, 2, kU8));
      t->push_back(Dl(c.in[sc].data, s.cols_s, 2));
      if (c.present[z]) t->push_back(Dl(c.in[z].data, s.cols_s, 2, kU8));
      return;
    }
    t->push_back(Dl(c.in[w].data, s.rows, 3, kU8));
    t->push_back(Dl(c.in[sc].data, s.scales, 2));
    if (c.present[z]) t->push_back(Dl(c.in[z].data, s.zeros, 2, kU8));
  };
  auto bias = [&](int b) {
    if (c.present[b]) t->push_back(Dl(c.in[b].data, c.in[b].dims.data(), 1));
  };
  rows(In::kW1, In::kW1S, In::kW1Z);
  bias(In::kB1);
  t->push_back(Dl(c.in[In::kW2].data, s.w2, 2, kU8));
  t->push_back(Dl(c.in[In::kW2S].data, s.w2s, 2));
  if (c.present[In::kW2Z]) t->push_back(Dl(c.in[In::kW2Z].data, s.w2s, 2, kU8));
  bias(In::kB2);
  if (c.present[In::kWU]) rows(In::kWU, In::kWUS, In::kWUZ);
  for (int i : {In::kTH, In::kPA, In::kPB, In::kPC, In::kAQ})
    if (c.present[i])
      t->push_back(Dl(c.in[i].data, c.in[i].dims.data(), static_cast<int>(c.in[i].dims.size())));
}

struct CpuKernel : Kernel<SparseAttrs> {
  Screens screens;  // mode exact, 1 token: the screened kernel's inputs
  ScreenPolicy policy;  // and when it runs

  // The kernel table's entry for this call with table mode `mode` (TableMode), or null.
  const fffc_kernel_entry* Find(const FfnCall& c, const std::string& mode) const {
    for (int32_t i = 0; i < fffc_num_kernels; ++i) {
      const fffc_kernel_entry& e = fffc_kernels[i];
      if (std::strcmp(e.op, Sparse::kName) == 0 &&
          Matches(attrs, c, mode, e.activation, e.up_activation, e.mode, e.has_b1, e.has_b2,
                  e.gated, e.d_in, e.d_ff, e.d_out, e.min_tokens, e.max_tokens))
        return &e;
    }
    return nullptr;
  }

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    using In = Sparse;
    FfnCall c;
    if (OrtStatus* st = Prepare(api, ctx, &c, attrs.mode, attrs.bits)) return st;
    widened.Apply(c.in, In::kNumInputs);  // 16-bit weights: float32 copies
    if (c.tokens == 0) return nullptr;
    const fffc_kernel_entry* entry = nullptr;
    // the screen is derived once per weight: only from weights that stay as they are
    const bool constant = attrs.constant_w1 && (attrs.constant_b1 || !c.present[In::kB1]) &&
                          c.weight_dtype == WeightDtype::kFloat32;
    if (attrs.mode == Sparse::Mode::kExact && attrs.screen && constant && c.tokens == 1 &&
        policy.Use())
      entry = Find(c, TableMode(attrs, c, SparseTable::kCpuScreened));
    const bool screen = entry != nullptr;
    const std::string mode = TableMode(attrs, c, SparseTable::kCpu);
    if (!screen) entry = Find(c, mode);
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for " + Describe(attrs, c, mode) +
                           " (CPU) in this artifact (" + std::to_string(c.tokens) + " tokens)");
    const int64_t x2[2] = {c.tokens, c.d_in}, y2[2] = {c.tokens, c.d_out};
    std::vector<DLTensor> t;
    t.push_back(Dl(c.in[In::kX].data, x2, 2));
    if (c.block != 0) {
      const Int4Shapes shapes(c);
      Int4Args(c, shapes, attrs.mode == Sparse::Mode::kTeal, &t);
      t.push_back(Dl(c.y, y2, 2));
      return CallKernel(api, ctx, *entry, t);
    }
    if (screen) {  // W1 as the screen's WS (float16), W1T, E: exact_screened.screened_arg_names
      const float* b1 =
          c.present[In::kB1] ? static_cast<const float*>(c.in[In::kB1].data) : nullptr;
      const Screen& s =
          screens.Get(static_cast<const float*>(c.in[In::kW1].data), b1, c.d_in, c.d_ff);
      t.push_back(Dl(const_cast<uint16_t*>(s.ws.data()), s.ws_dims, 2, DLDataType{kDLFloat, 16, 1}));
      t.push_back(Dl(const_cast<float*>(s.w1t.data()), s.w1t_dims, 2));
      t.push_back(Dl(const_cast<float*>(s.e.data()), s.e_dims, 2));
    }
    for (int i : {In::kW1, In::kB1, In::kW2, In::kB2, In::kWU, In::kTH, In::kPA, In::kPB, In::kPC,
                  In::kXC, In::kHC})
      if (c.present[i] && !(screen && i == In::kW1))
        t.push_back(Dl(c.in[i].data, c.in[i].dims.data(), static_cast<int>(c.in[i].dims.size())));
    int32_t listed = 0;
    const int64_t one = 1;
    if (screen) t.push_back(Dl(&listed, &one, 1, /*int32=*/true));  // STAT
    t.push_back(Dl(c.y, y2, 2));
    OrtStatus* st = CallKernel(api, ctx, *entry, t);
    if (screen && st == nullptr) policy.Observe(listed, c.d_ff);
    return st;
  }
};

}  // namespace

OrtStatus* RegisterSparseFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewSparseFfnOp(api, kCpuEp, MakeKernel<CpuKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
