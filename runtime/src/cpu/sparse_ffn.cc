#include "sparse_ffn.h"

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>
#include <fffc/kernel_table.h>

#include "../tvm_backend.h"

namespace fffc::cpu {
namespace {

constexpr int kNumInputs = 6;  // X, W1, B1?, W2, B2?, WU?  (fffc/ops.py SPARSE_FFN)
enum Input { kX = 0, kW1, kB1, kW2, kB2, kWU };

struct Attrs {
  std::string activation, up_activation, mode;
};

struct Kernel {
  const OrtApi* api;
  Attrs attrs;
};

OrtStatus* Fail(const OrtApi* api, const std::string& msg) {
  return api->CreateStatus(ORT_FAIL, ("fffc SparseFFN: " + msg).c_str());
}

// ORT_API_CALL-free helper: a string attribute (empty when absent).
std::string StringAttr(const OrtApi* api, const OrtKernelInfo* info, const char* name,
                       const char* fallback) {
  size_t size = 0;
  OrtStatus* st = api->KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return fallback;
  }
  std::string out(size, '\0');
  st = api->KernelInfoGetAttribute_string(info, name, out.data(), &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return fallback;
  }
  out.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return out;
}

struct TensorView {
  const OrtValue* value = nullptr;
  std::vector<int64_t> dims;
  void* data = nullptr;
};

OrtStatus* View(const OrtApi* api, const OrtValue* v, TensorView* out, const char* name) {
  out->value = v;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* st = api->GetTensorTypeAndShape(v, &info)) return st;
  ONNXTensorElementDataType type;
  size_t rank = 0;
  OrtStatus* st = api->GetTensorElementType(info, &type);
  if (st == nullptr) st = api->GetDimensionsCount(info, &rank);
  if (st == nullptr) {
    out->dims.resize(rank);
    st = api->GetDimensions(info, out->dims.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (st != nullptr) return st;
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    return Fail(api, std::string("input ") + name + " must be float32");
  return api->GetTensorMutableData(const_cast<OrtValue*>(v), &out->data);
}

DLTensor Dl(void* data, const int64_t* shape, int ndim) {
  DLTensor t;
  std::memset(&t, 0, sizeof(t));
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.shape = const_cast<int64_t*>(shape);
  return t;
}

std::string Describe(const Attrs& a, int64_t d_in, int64_t d_ff, int64_t d_out, bool b1, bool b2,
                     bool gated) {
  return "SparseFFN(activation=" + a.activation + ", up_activation=" + a.up_activation +
         ", mode=" + a.mode + ", d_in=" + std::to_string(d_in) + ", d_ff=" + std::to_string(d_ff) +
         ", d_out=" + std::to_string(d_out) + ", B1=" + (b1 ? "yes" : "no") +
         ", B2=" + (b2 ? "yes" : "no") + ", WU=" + (gated ? "yes" : "no") + ")";
}

OrtStatus* Compute(Kernel* k, OrtKernelContext* ctx) {
  const OrtApi* api = k->api;
  size_t count = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &count)) return st;
  TensorView in[kNumInputs];
  bool present[kNumInputs] = {false};
  static const char* kNames[kNumInputs] = {"X", "W1", "B1", "W2", "B2", "WU"};
  for (size_t i = 0; i < count && i < kNumInputs; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) continue;  // an omitted optional input
    if (OrtStatus* st = View(api, v, &in[i], kNames[i])) return st;
    present[i] = true;
  }
  if (!present[kX] || !present[kW1] || !present[kW2]) return Fail(api, "X, W1 and W2 are required");
  const auto& xd = in[kX].dims;
  if (xd.empty() || in[kW1].dims.size() != 2 || in[kW2].dims.size() != 2)
    return Fail(api, "expected X [..., d_in], W1 [d_in, d_ff], W2 [d_ff, d_out]");
  const int64_t d_in = xd.back(), d_ff = in[kW1].dims[1], d_out = in[kW2].dims[1];
  if (in[kW1].dims[0] != d_in || in[kW2].dims[0] != d_ff)
    return Fail(api, "weight shapes do not chain: X [..., " + std::to_string(d_in) + "], W1 [" +
                         std::to_string(in[kW1].dims[0]) + ", " + std::to_string(d_ff) + "], W2 [" +
                         std::to_string(in[kW2].dims[0]) + ", " + std::to_string(d_out) + "]");
  int64_t tokens = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) tokens *= xd[i];

  std::vector<int64_t> ydims(xd.begin(), xd.end());
  ydims.back() = d_out;
  OrtValue* y = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &y)) return st;
  if (tokens == 0) return nullptr;
  void* ydata = nullptr;
  if (OrtStatus* st = api->GetTensorMutableData(y, &ydata)) return st;

  const bool b1 = present[kB1], b2 = present[kB2], gated = present[kWU];
  const fffc_kernel_entry* entry = nullptr;
  for (int32_t i = 0; i < fffc_num_kernels; ++i) {
    const fffc_kernel_entry& e = fffc_kernels[i];
    if (k->attrs.activation == e.activation && k->attrs.up_activation == e.up_activation &&
        k->attrs.mode == e.mode && e.has_b1 == b1 && e.has_b2 == b2 && e.gated == gated &&
        e.d_in == d_in && e.d_ff == d_ff && e.d_out == d_out && e.min_tokens <= tokens &&
        tokens <= e.max_tokens) {
      entry = &fffc_kernels[i];
      break;
    }
  }
  if (entry == nullptr)
    return Fail(api, "no compiled kernel for " + Describe(k->attrs, d_in, d_ff, d_out, b1, b2, gated) +
                         " in this artifact (" + std::to_string(tokens) + " tokens)");

  const int64_t x2[2] = {tokens, d_in}, y2[2] = {tokens, d_out};
  DLTensor t[kNumInputs + 1];
  TVMFFIAny args[kNumInputs + 1];
  int n = 0;
  t[n++] = Dl(in[kX].data, x2, 2);
  t[n++] = Dl(in[kW1].data, in[kW1].dims.data(), 2);
  if (b1) t[n++] = Dl(in[kB1].data, in[kB1].dims.data(), static_cast<int>(in[kB1].dims.size()));
  t[n++] = Dl(in[kW2].data, in[kW2].dims.data(), 2);
  if (b2) t[n++] = Dl(in[kB2].data, in[kB2].dims.data(), static_cast<int>(in[kB2].dims.size()));
  if (gated) t[n++] = Dl(in[kWU].data, in[kWU].dims.data(), 2);
  t[n++] = Dl(ydata, y2, 2);
  for (int i = 0; i < n; ++i) {
    std::memset(&args[i], 0, sizeof(TVMFFIAny));
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = &t[i];
  }
  TVMFFIAny ret;
  std::memset(&ret, 0, sizeof(ret));
  ret.type_index = kTVMFFINone;
  InstallTvmBackend();
  ParallelScope scope(api, ctx);
  if (entry->fn(nullptr, args, n, &ret) != 0)
    return Fail(api, std::string(entry->symbol) + ": " + TakeLastKernelError());
  return nullptr;
}

// --- OrtCustomOp callbacks ---------------------------------------------------------------

const char* GetName(const OrtCustomOp*) { return "SparseFFN"; }
const char* GetEp(const OrtCustomOp*) { return "CPUExecutionProvider"; }
ONNXTensorElementDataType FloatType(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t InputCount(const OrtCustomOp*) { return kNumInputs; }
size_t OutputCount(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic InputChar(const OrtCustomOp*, size_t i) {
  return (i == kB1 || i == kB2 || i == kWU) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
OrtCustomOpInputOutputCharacteristic OutputChar(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType InputMem(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int MinArity(const OrtCustomOp*) { return 1; }
int Homogeneous(const OrtCustomOp*) { return 1; }

const OrtApi* g_api = nullptr;

OrtStatusPtr CreateKernelV2(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                            void** kernel) {
  try {
    auto* k = new Kernel{api ? api : g_api,
                         {StringAttr(g_api, info, "activation", "relu"),
                          StringAttr(g_api, info, "up_activation", "none"),
                          StringAttr(g_api, info, "mode", "exact")}};
    *kernel = k;
    return nullptr;
  } catch (const std::exception& e) {
    return g_api->CreateStatus(ORT_FAIL, e.what());
  }
}

OrtStatusPtr ComputeV2(void* kernel, OrtKernelContext* ctx) {
  auto* k = static_cast<Kernel*>(kernel);
  try {
    return Compute(k, ctx);
  } catch (const std::exception& e) {
    return Fail(k->api, e.what());
  }
}

void Destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }

OrtCustomOp MakeOp() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kOrtApiVersion;
  op.GetName = GetName;
  op.GetExecutionProviderType = GetEp;
  op.GetInputType = FloatType;
  op.GetInputTypeCount = InputCount;
  op.GetOutputType = FloatType;
  op.GetOutputTypeCount = OutputCount;
  op.KernelDestroy = Destroy;
  op.GetInputCharacteristic = InputChar;
  op.GetOutputCharacteristic = OutputChar;
  op.GetInputMemoryType = InputMem;
  op.GetVariadicInputMinArity = MinArity;
  op.GetVariadicInputHomogeneity = Homogeneous;
  op.GetVariadicOutputMinArity = MinArity;
  op.GetVariadicOutputHomogeneity = Homogeneous;
  op.CreateKernelV2 = CreateKernelV2;
  op.KernelComputeV2 = ComputeV2;
  return op;
}

}  // namespace

OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain) {
  g_api = api;
  static OrtCustomOp sparse_ffn = MakeOp();  // must outlive every session
  return api->CustomOpDomain_Add(domain, &sparse_ffn);
}

}  // namespace fffc::cpu
