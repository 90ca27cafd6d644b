// ai.fffc::RoutedFFN (Mixture-of-Depths) on the CUDA execution provider.
#include <map>
#include <mutex>
#include <string>

#include "../op_common.h"
#include "../structured_call.h"
#include "launch.h"
#include "ops.h"

namespace fffc::cuda {
namespace {

size_t Round256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Routing, the dense FFN on the gathered rows (a "counted_" StructuredFFN variant: it reads
// the device-side count, so the host never waits for the selection), then the combine.
struct CudaRoutedKernel : Kernel<RoutedAttrs> {
  Workspace scratch;  // the launches' own scratch (scores, hidden activations)
  Workspace buffers;  // IDX, WT, CNT, XS, POS, D: passed between the three stages
  std::mutex coef_mutex;
  std::map<CUcontext, CUdeviceptr> coef;  // the combine's coefficients, uploaded once

  ~CudaRoutedKernel() override {
    std::string why;
    if (const Driver* d = GetDriver(&why))
      for (auto& [ctx, p] : coef) d->cuMemFree(p);
  }

  std::string Coefficients(const Driver* d, CUdeviceptr* out) {
    CUcontext ctx = nullptr;
    if (CUresult r = d->cuCtxGetCurrent(&ctx); r != 0) return Error(d, "cuCtxGetCurrent", r);
    std::lock_guard<std::mutex> lock(coef_mutex);
    auto it = coef.find(ctx);
    if (it == coef.end()) {
      CUdeviceptr p = 0;
      if (CUresult r = d->cuMemAlloc(&p, sizeof(attrs.coef)); r != 0) return Error(d, "cuMemAlloc", r);
      if (CUresult r = d->cuMemcpyHtoD(p, attrs.coef, sizeof(attrs.coef)); r != 0) {
        d->cuMemFree(p);
        return Error(d, "cuMemcpyHtoD", r);
      }
      it = coef.emplace(ctx, p).first;
    }
    *out = it->second;
    return "";
  }

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    using In = Routed;
    RoutedCall c;
    if (OrtStatus* st = PrepareRouted(api, ctx, attrs, &c)) return st;
    if (c.tokens == 0) return nullptr;
    const int64_t n = c.tokens, d = c.d;
    // topk selects exactly B·k rows: the FFN's grid covers those; threshold: up to all N
    const int64_t rows = c.topk ? c.batch * c.k : n;
    const int32_t route = FindEntry(In::kName, c.route_mode, nullptr, c.present[In::kBR],
                                    c.present[In::kBA], d, 0, d, n);
    const int32_t combine = FindEntry(In::kName, "combine", nullptr, 0, 0, d, 0, d, n);
    const int32_t ffn =
        rows == 0 ? -1
                  : FindEntry(Structured::kName, c.ffn_mode, Name(attrs.activation),
                              c.present[In::kB1], c.present[In::kB2], d, c.d_ff, d, rows, true,
                              c.weight_dtype);
    if (route < 0 || combine < 0 || (rows > 0 && ffn < 0))
      return Fail(api, "no compiled kernels for RoutedFFN(" + c.route_mode + ", activation=" +
                           Name(attrs.activation) + ", d=" + std::to_string(d) + ", d_ff=" +
                           std::to_string(c.d_ff) + ") (CUDA, " + Name(c.weight_dtype) +
                           " weights) in this artifact");
    std::string why;
    const Driver* drv = GetDriver(&why);
    if (drv == nullptr) return Fail(api, "RoutedFFN: " + why);
    void* stream = nullptr;
    if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;
    CUdeviceptr coefs = 0;
    if (std::string err = Coefficients(drv, &coefs); !err.empty())
      return Fail(api, "RoutedFFN: " + err);

    // one block for the buffers passed between the stages, 256-byte aligned pieces
    const size_t f = sizeof(float), nb = static_cast<size_t>(n);
    const std::pair<const char*, size_t> parts[] = {
        {"IDX", nb * 4}, {"WT", nb * f}, {"CNT", 4}, {"POS", nb * 4},
        {"XS", nb * static_cast<size_t>(d) * f}, {"D", nb * static_cast<size_t>(d) * f}};
    size_t total = 0;
    for (const auto& [name, bytes] : parts) total += Round256(bytes);
    CUdeviceptr base = 0;
    if (std::string err = buffers.Get(drv, stream, total, &base); !err.empty())
      return Fail(api, "RoutedFFN: " + err);
    std::map<std::string, CUdeviceptr> t;
    for (const auto& [name, bytes] : parts) {
      t[name] = base;
      base += Round256(bytes);
    }
    t["COEF"] = coefs;
    for (int i : {In::kX, In::kWR, In::kBR, In::kWA, In::kBA, In::kLS, In::kLB})
      if (c.present[i]) t[In::kInputNames[i]] = Ptr(c.in[i].data);
    const std::map<std::string, int32_t> scalars = {{"S", static_cast<int32_t>(c.seq)},
                                                    {"KN", static_cast<int32_t>(c.k)}};
    if (std::string err = Launch(route, t, n, stream, &scratch, scalars); !err.empty())
      return Fail(api, "RoutedFFN routing: " + err);
    if (rows > 0) {
      using Ffn = Structured;  // the FFN's kernel takes StructuredFFN's inputs (k = 1, no U)
      std::map<std::string, CUdeviceptr> f = {{Ffn::kInputNames[Ffn::kX], t["XS"]},
                                              {Ffn::kInputNames[Ffn::kA1], Ptr(c.in[In::kW1].data)},
                                              {Ffn::kInputNames[Ffn::kA2], Ptr(c.in[In::kW2].data)},
                                              {"Y", t["D"]}, {"CNT", t["CNT"]}};
      if (c.present[In::kB1]) f[Ffn::kInputNames[Ffn::kB1]] = Ptr(c.in[In::kB1].data);
      if (c.present[In::kB2]) f[Ffn::kInputNames[Ffn::kB2]] = Ptr(c.in[In::kB2].data);
      if (std::string err = Launch(ffn, f, rows, stream, &scratch); !err.empty())
        return Fail(api, "RoutedFFN FFN: " + err);
    }
    t["Y"] = reinterpret_cast<CUdeviceptr>(c.y);
    if (std::string err = Launch(combine, t, n, stream, &scratch, scalars); !err.empty())
      return Fail(api, "RoutedFFN combine: " + err);
    return nullptr;
  }
};

}  // namespace

OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain) {
  if (!Carries(Routed::kName)) return nullptr;
  static OrtCustomOp* op = NewRoutedFfnOp(api, kCudaEp, MakeKernel<CudaRoutedKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cuda
