#include "fast_feed_forward.h"

#include <string>
#include <vector>

#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "tvm_call.h"

namespace fffc::cpu {
namespace {

enum { kX = 0, kWin, kBin, kWout, kInputs };

struct FffKernel : KernelBase {
  // attrs.mode is "<trees>x<depth>", the kernel table's mode for this op
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    static const char* kNames[kInputs] = {"X", "W_in", "B_in", "W_out"};
    TensorView in[kInputs];
    for (int i = 0; i < kInputs; ++i) {
      const OrtValue* v = nullptr;
      if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
      if (v == nullptr) return Fail(api, std::string("FastFeedForward needs input ") + kNames[i]);
      if (OrtStatus* st = View(api, v, &in[i], kNames[i])) return st;
    }
    const auto& xd = in[kX].dims;
    if (xd.empty() || in[kWin].dims.size() != 2 || in[kBin].dims.size() != 1 ||
        in[kWout].dims.size() != 2)
      return Fail(api, "FastFeedForward: expected X [..., d_in], W_in [K·n, d_in], B_in [K·n], "
                       "W_out [K·n, d_out]");
    const int64_t d_in = xd.back(), nodes = in[kWin].dims[0], d_out = in[kWout].dims[1];
    if (in[kWin].dims[1] != d_in || in[kBin].dims[0] != nodes || in[kWout].dims[0] != nodes)
      return Fail(api, "FastFeedForward: weight shapes do not agree with X and each other");
    int64_t tokens = 1;
    for (size_t i = 0; i + 1 < xd.size(); ++i) tokens *= xd[i];
    std::vector<int64_t> ydims(xd.begin(), xd.end());
    ydims.back() = d_out;
    OrtValue* y = nullptr;
    if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &y))
      return st;
    if (tokens == 0) return nullptr;
    void* ydata = nullptr;
    if (OrtStatus* st = api->GetTensorMutableData(y, &ydata)) return st;
    const fffc_kernel_entry* entry = nullptr;
    for (int32_t i = 0; i < fffc_num_kernels && entry == nullptr; ++i) {
      const fffc_kernel_entry& e = fffc_kernels[i];
      if (std::string(e.op) == "FastFeedForward" && attrs.mode == e.mode && e.d_in == d_in &&
          e.d_ff == nodes && e.d_out == d_out && e.min_tokens <= tokens && tokens <= e.max_tokens)
        entry = &e;
    }
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for FastFeedForward(trees x depth = " + attrs.mode +
                           ", d_in=" + std::to_string(d_in) + ", nodes=" + std::to_string(nodes) +
                           ", d_out=" + std::to_string(d_out) + ") (CPU) in this artifact");
    const int64_t x2[2] = {tokens, d_in}, y2[2] = {tokens, d_out};
    std::vector<DLTensor> t = {
        Dl(in[kX].data, x2, 2), Dl(in[kWin].data, in[kWin].dims.data(), 2),
        Dl(in[kBin].data, in[kBin].dims.data(), 1), Dl(in[kWout].data, in[kWout].dims.data(), 2),
        Dl(ydata, y2, 2)};
    return CallKernel(api, ctx, *entry, t);
  }
};

}  // namespace

OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op =
      NewFastFeedForwardOp(api, "CPUExecutionProvider", MakeKernel<FffKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
