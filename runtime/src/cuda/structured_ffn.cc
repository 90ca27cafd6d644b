// ai.fffc::StructuredFFN and ai.fffc::RoutedFFN on the CUDA execution provider: the
// artifact's fatbin launched on ONNX Runtime's compute stream (never synchronized here).
#include <map>
#include <mutex>
#include <string>

#include "../op_common.h"
#include "../structured_call.h"
#include "sparse_ffn.h"

namespace fffc::cuda {
namespace {

CUdeviceptr Ptr(const TensorView& t) { return reinterpret_cast<CUdeviceptr>(t.data); }

size_t Round256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The structured path on the device (the pre-merged dense path is a CPU-only dispatch: a
// CUDA artifact has merged_max_tokens 0).
struct CudaStructuredKernel : KernelBase {
  Workspace workspace;

  OrtStatus* Compute(OrtKernelContext* ctx) override {
    StructuredCall c;
    if (OrtStatus* st = PrepareStructured(api, ctx, attrs, &c)) return st;
    if (c.tokens == 0) return nullptr;
    if (c.merged) return Fail(api, "StructuredFFN: no pre-merged path on CUDA (merged_max_tokens "
                                   "must be 0 in a CUDA artifact)");
    const int32_t index = FindEntry("StructuredFFN", c.mode, attrs.activation.c_str(),
                                    c.present[kSB1], c.present[kSB2], c.d_in, c.d_ff, c.d_out,
                                    c.tokens, false, c.weight_dtype);
    if (index < 0)
      return Fail(api, "no compiled kernel for " + DescribeStructured(attrs, c) + " (CUDA, " +
                           c.weight_dtype + " weights) in this artifact (" +
                           std::to_string(c.tokens) + " tokens)");
    void* stream = nullptr;
    if (OrtStatus* st = api->KernelContext_GetGPUComputeStream(ctx, &stream)) return st;
    std::map<std::string, CUdeviceptr> tensors;
    for (int i : {kSX, kSA1, kSU1, kSB1, kSA2, kSU2, kSB2, kSS1, kSS2})
      if (c.present[i]) tensors[kStructuredNames[i]] = Ptr(c.in[i]);
    tensors["Y"] = reinterpret_cast<CUdeviceptr>(c.y);
    std::string err = Launch(index, tensors, c.tokens, stream, &workspace);
    return err.empty() ? nullptr : Fail(api, "StructuredFFN: " + err);
  }
};

// Routing, the dense FFN on the gathered rows (a "counted_" StructuredFFN variant: it reads
// the device-side count, so the host never waits for the selection), then the combine.
struct CudaRoutedKernel : KernelBase {
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
    RoutedCall c;
    if (OrtStatus* st = PrepareRouted(api, ctx, attrs, &c)) return st;
    if (c.tokens == 0) return nullptr;
    const int64_t n = c.tokens, d = c.d;
    // topk selects exactly B·k rows: the FFN's grid covers those; threshold: up to all N
    const int64_t rows = c.topk ? c.batch * c.k : n;
    const int32_t route = FindEntry("RoutedFFN", c.route_mode, nullptr, c.present[kRBR],
                                    c.present[kRBA], d, 0, d, n);
    const int32_t combine = FindEntry("RoutedFFN", "combine", nullptr, 0, 0, d, 0, d, n);
    const int32_t ffn =
        rows == 0 ? -1
                  : FindEntry("StructuredFFN", c.ffn_mode, attrs.activation.c_str(),
                              c.present[kRB1], c.present[kRB2], d, c.d_ff, d, rows, true,
                              c.weight_dtype);
    if (route < 0 || combine < 0 || (rows > 0 && ffn < 0))
      return Fail(api, "no compiled kernels for RoutedFFN(" + c.route_mode + ", activation=" +
                           attrs.activation + ", d=" + std::to_string(d) + ", d_ff=" +
                           std::to_string(c.d_ff) + ") (CUDA, " + c.weight_dtype +
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
    for (int i : {kRX, kRWR, kRBR, kRWA, kRBA, kRLS, kRLB})
      if (c.present[i]) t[kRoutedNames[i]] = Ptr(c.in[i]);
    const std::map<std::string, int32_t> scalars = {{"S", static_cast<int32_t>(c.seq)},
                                                    {"KN", static_cast<int32_t>(c.k)}};
    if (std::string err = Launch(route, t, n, stream, &scratch, scalars); !err.empty())
      return Fail(api, "RoutedFFN routing: " + err);
    if (rows > 0) {
      std::map<std::string, CUdeviceptr> f = {{"X", t["XS"]}, {"A1", Ptr(c.in[kRW1])},
                                              {"A2", Ptr(c.in[kRW2])}, {"Y", t["D"]},
                                              {"CNT", t["CNT"]}};
      if (c.present[kRB1]) f["B1"] = Ptr(c.in[kRB1]);
      if (c.present[kRB2]) f["B2"] = Ptr(c.in[kRB2]);
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

OrtStatus* RegisterStructuredOps(const OrtApi* api, OrtCustomOpDomain* domain) {
  bool structured = false, routed = false;
  for (int32_t i = 0; i < fffc_num_cuda_kernels; ++i) {
    const std::string op = fffc_cuda_kernels[i].op, variant = fffc_cuda_kernels[i].variant;
    structured = structured || (op == "StructuredFFN" && variant.rfind("counted_", 0) != 0);
    routed = routed || op == "RoutedFFN";
  }
  if (structured) {
    static OrtCustomOp* op =
        NewStructuredFfnOp(api, kCudaEp, MakeKernel<CudaStructuredKernel>);
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, op)) return st;
  }
  if (routed) {
    static OrtCustomOp* op =
        NewRoutedFfnOp(api, kCudaEp, MakeKernel<CudaRoutedKernel>);
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, op)) return st;
  }
  return nullptr;
}

}  // namespace fffc::cuda
