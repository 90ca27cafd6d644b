#include "op_common.h"

#include "half.h"
#include "structured_call.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>

namespace fffc {
namespace {

// The weight matrices (fffc.ops.WEIGHT_INPUTS): the inputs that may be 16-bit.
bool IsWeight(const char* name) {
  static const char* const kWeights[] = {"W1", "W2", "WU", "W_in", "W_out", "A1",
                                         "U1", "A2", "U2", "S1",   "S2"};
  for (const char* w : kWeights)
    if (std::strcmp(w, name) == 0) return true;
  return false;
}

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

}  // namespace

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
  const bool narrow = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ||
                      type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && !(narrow && IsWeight(name)))
    return Fail(api, std::string("input ") + name + " must be float32" +
                         (IsWeight(name) ? ", float16 or bfloat16" : ""));
  out->type = type;
  return api->GetTensorMutableData(const_cast<OrtValue*>(v), &out->data);
}


void WidenedWeights::Apply(TensorView* in, int n) {
  for (int i = 0; i < n; ++i) {
    const bool half = in[i].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    if (in[i].data == nullptr || (!half && in[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16))
      continue;
    size_t count = 1;
    for (int64_t d : in[i].dims) count *= static_cast<size_t>(d);
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, fresh] = copies_.try_emplace(in[i].data);
    if (fresh) {
      const auto* src = static_cast<const uint16_t*>(in[i].data);
      it->second.resize(count);
      for (size_t j = 0; j < count; ++j)
        it->second[j] = half ? HalfToFloat(src[j]) : Bfloat16ToFloat(src[j]);
    }
    in[i].data = it->second.data();
    in[i].type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

std::string WeightDtype(const TensorView* in, const bool* present, int n,
                        const char* const* names) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (!present[i] || !IsWeight(names[i])) continue;
    const std::string t = in[i].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16    ? "float16"
                          : in[i].type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 ? "bfloat16"
                                                                                 : "float32";
    if (!out.empty() && out != t) return "mixed";
    out = t;
  }
  return out.empty() ? "float32" : out;
}

OrtStatus* ViewInputs(const OrtApi* api, OrtKernelContext* ctx, int n, const char* const* names,
                      TensorView* in, bool* present) {
  size_t count = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &count)) return st;
  for (size_t i = 0; i < count && i < static_cast<size_t>(n); ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) continue;  // an omitted optional input
    if (OrtStatus* st = View(api, v, &in[i], names[i])) return st;
    present[i] = true;
  }
  return nullptr;
}

namespace {

// The OrtCustomOp with what CreateKernelV2 needs to build this EP's kernel.
struct OpWithFactory {
  OrtCustomOp op;  // first member: the OrtCustomOp* ORT passes back points here
  const char* ep;
  const char* name;
  size_t inputs;
  enum Kind { kSparse, kFff, kStructured, kRouted } kind;  // attributes, required inputs
  KernelFactory factory;
  const char* const* input_names;  // fffc.ops' names of the op's inputs
};

const OpWithFactory* Holder(const OrtCustomOp* op) {
  return reinterpret_cast<const OpWithFactory*>(op);
}

int64_t IntAttr(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t out = fallback;
  if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, &out)) {
    api->ReleaseStatus(st);
    return fallback;
  }
  return out;
}

// A 2-float attribute into out (kept as is when absent; any other length is an error).
void FloatsAttr(const OrtApi* api, const OrtKernelInfo* info, const char* name, float out[2]) {
  size_t size = 0;
  if (OrtStatus* st = api->KernelInfoGetAttributeArray_float(info, name, nullptr, &size)) {
    api->ReleaseStatus(st);
    return;
  }
  if (size != 2) throw std::runtime_error(std::string("attribute ") + name + " must hold 2 floats");
  if (OrtStatus* st = api->KernelInfoGetAttributeArray_float(info, name, out, &size)) {
    api->ReleaseStatus(st);
    throw std::runtime_error(std::string("attribute ") + name + " could not be read");
  }
}

const OrtApi* g_api = nullptr;

const char* GetName(const OrtCustomOp* op) { return Holder(op)->name; }
const char* GetEp(const OrtCustomOp* op) { return Holder(op)->ep; }
ONNXTensorElementDataType FloatType(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
// Weights of any type (View accepts float32, float16, bfloat16), everything else float32.
ONNXTensorElementDataType InputType(const OrtCustomOp* op, size_t i) {
  return IsWeight(Holder(op)->input_names[i]) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED
                                              : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t InputCount(const OrtCustomOp* op) { return Holder(op)->inputs; }
size_t OutputCount(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic InputChar(const OrtCustomOp* op, size_t i) {
  switch (Holder(op)->kind) {
    case OpWithFactory::kFff:
      return INPUT_OUTPUT_REQUIRED;
    case OpWithFactory::kStructured:  // X, A1, A2
      return (i == 0 || i == 1 || i == 4) ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
    case OpWithFactory::kRouted:  // X, WR, W1, W2
      return (i == 0 || i == 1 || i == 3 || i == 5) ? INPUT_OUTPUT_REQUIRED
                                                    : INPUT_OUTPUT_OPTIONAL;
    default:
      return (i == kX || i == kW1 || i == kW2) ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
}
OrtCustomOpInputOutputCharacteristic OutputChar(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType InputMem(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int MinArity(const OrtCustomOp*) { return 1; }
int Homogeneous(const OrtCustomOp*) { return 1; }

// Whether input i is a constant initializer (an absent or non-constant input: false).
bool IsConstantInput(const OrtApi* api, const OrtKernelInfo* info, size_t i) {
  size_t count = 0;
  if (OrtStatus* st = api->KernelInfo_GetInputCount(info, &count)) {
    api->ReleaseStatus(st);
    return false;
  }
  if (i >= count) return false;
  int constant = 0;
  const OrtValue* value = nullptr;
  if (OrtStatus* st = api->KernelInfoGetConstantInput_tensor(info, i, &constant, &value)) {
    api->ReleaseStatus(st);
    return false;
  }
  return constant != 0 && value != nullptr;
}

OrtStatusPtr CreateKernelV2(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                            void** kernel) {
  const OrtApi* a = api ? api : g_api;
  try {
    Attrs attrs;
    if (Holder(op)->kind == OpWithFactory::kRouted) {
      attrs = {StringAttr(a, info, "activation", "gelu"), "none", "routed"};
      attrs.selection = StringAttr(a, info, "selection", "topk");
      attrs.router = StringAttr(a, info, "router", "raw");
      attrs.k = IntAttr(a, info, "k", 1);
      attrs.k_divisor = IntAttr(a, info, "k_divisor", 0);
      attrs.k_min = IntAttr(a, info, "k_min", 0);
      attrs.k_round = StringAttr(a, info, "k_round", "trunc");
      if (OrtStatus* st = a->KernelInfoGetAttribute_float(info, "k_scale", &attrs.k_scale))
        a->ReleaseStatus(st);  // absent: a constant k
      if (attrs.k_round != "trunc" && attrs.k_round != "floor" && attrs.k_round != "ceil")
        throw std::runtime_error("RoutedFFN: k_round must be trunc, floor or ceil");
      if (attrs.k_divisor < 0 || !(attrs.k_scale >= 0.f))
        throw std::runtime_error("RoutedFFN: k_scale and k_divisor must be >= 0");
      if (attrs.selection != "topk" && attrs.selection != "threshold")
        throw std::runtime_error("RoutedFFN: selection must be topk or threshold");
      if (attrs.router != "raw" && attrs.router != "sigmoid")
        throw std::runtime_error("RoutedFFN: router must be raw or sigmoid");
      if (attrs.selection == "topk" && attrs.k < 1 && !attrs.KFromLength())
        throw std::runtime_error("RoutedFFN: k must be >= 1");
      float x[2] = {1.f, 0.f}, d[2] = {0.f, 1.f};
      FloatsAttr(a, info, "x_coef", x);
      FloatsAttr(a, info, "delta_coef", d);
      attrs.coef[0] = x[0], attrs.coef[1] = x[1], attrs.coef[2] = d[0], attrs.coef[3] = d[1];
      if (OrtStatus* st = a->KernelInfoGetAttribute_float(info, "epsilon", &attrs.epsilon))
        a->ReleaseStatus(st);  // absent: the default
    } else if (Holder(op)->kind == OpWithFactory::kStructured) {
      attrs = {StringAttr(a, info, "activation", "gelu"), "none", "structured"};
      attrs.merged_max_tokens = IntAttr(a, info, "merged_max_tokens", 0);
    } else if (Holder(op)->kind == OpWithFactory::kFff) {
      // the kernel table's mode: "<trees>x<depth>", "ge" appended for tie_break "ge"
      // (fffc.ops.fff_mode)
      const std::string tie = StringAttr(a, info, "tie_break", "gt");
      if (tie != "gt" && tie != "ge")
        throw std::runtime_error("FastFeedForward: tie_break must be gt or ge, got " + tie);
      attrs = {StringAttr(a, info, "activation", "gelu"), "none",
               std::to_string(IntAttr(a, info, "trees", 1)) + "x" +
                   std::to_string(IntAttr(a, info, "depth", 11)) + (tie == "gt" ? "" : tie)};
    } else {
      attrs = {StringAttr(a, info, "activation", "relu"),
               StringAttr(a, info, "up_activation", "none"), StringAttr(a, info, "mode", "exact")};
      attrs.constant_w1 = IsConstantInput(a, info, kW1);
      attrs.constant_b1 = IsConstantInput(a, info, kB1);
      const char* screen = std::getenv("FFFC_EXACT_SCREEN");
      attrs.screen = screen == nullptr || std::string(screen) != "0";
    }
    *kernel = Holder(op)->factory(a, attrs);
    return nullptr;
  } catch (const std::exception& e) {
    return a->CreateStatus(ORT_FAIL, e.what());
  }
}

OrtStatusPtr ComputeV2(void* kernel, OrtKernelContext* ctx) {
  auto* k = static_cast<KernelBase*>(kernel);
  try {
    return k->Compute(ctx);
  } catch (const std::exception& e) {
    return Fail(k->api, e.what());
  }
}

void Destroy(void* kernel) { delete static_cast<KernelBase*>(kernel); }

}  // namespace

const char* const kInputNames[kNumInputs] = {"X",  "W1", "B1", "W2", "B2", "WU",
                                             "TH", "PA", "PB", "PC", "XC", "HC"};
const char* const kFffNames[4] = {"X", "W_in", "B_in", "W_out"};

OrtStatus* Fail(const OrtApi* api, const std::string& msg) {
  return api->CreateStatus(ORT_FAIL, ("fffc: " + msg).c_str());
}

OrtStatus* Prepare(const OrtApi* api, OrtKernelContext* ctx, FfnCall* c, const std::string& mode) {
  if (OrtStatus* st = ViewInputs(api, ctx, kNumInputs, kInputNames, c->in, c->present))
    return st;
  if (!c->present[kX] || !c->present[kW1] || !c->present[kW2])
    return Fail(api, "SparseFFN: X, W1 and W2 are required");
  const auto& xd = c->in[kX].dims;
  if (xd.empty() || c->in[kW1].dims.size() != 2 || c->in[kW2].dims.size() != 2)
    return Fail(api, "SparseFFN: expected X [..., d_in], W1 [d_in, d_ff], W2 [d_ff, d_out]");
  const bool rows = mode == "predictor";  // W1 [d_ff, d_in], row per neuron
  c->d_in = xd.back();
  c->d_ff = c->in[kW1].dims[rows ? 0 : 1];
  c->d_out = c->in[kW2].dims[1];
  if (c->in[kW1].dims[rows ? 1 : 0] != c->d_in || c->in[kW2].dims[0] != c->d_ff)
    return Fail(api, "SparseFFN: weight shapes do not chain: X [..., " + std::to_string(c->d_in) + "], W1 [" +
                         std::to_string(c->in[kW1].dims[0]) + ", " +
                         std::to_string(c->in[kW1].dims[1]) + "] (mode " + mode + "), W2 [" +
                         std::to_string(c->in[kW2].dims[0]) + ", " + std::to_string(c->d_out) + "]");
  const bool thresholds = mode == "teal" || mode == "cats";
  if (thresholds != c->present[kTH])
    return Fail(api, std::string("input TH (thresholds) is ") +
                         (thresholds ? "required by mode " + mode : "only for modes teal, cats"));
  if (thresholds && (c->in[kTH].dims.size() != 1 || c->in[kTH].dims[0] != 2))
    return Fail(api, "SparseFFN: TH must hold two thresholds (teal: [t_in, t_hidden]; cats: [t_in, t_gate])");
  for (int i : {kXC, kHC}) {
    if (!c->present[i]) continue;
    if (mode != "teal") return Fail(api, std::string("input ") + kInputNames[i] + " is only for mode teal");
    const int64_t n = i == kXC ? c->d_in : c->d_ff;
    if (c->in[i].dims.size() != 1 || c->in[i].dims[0] != n)
      return Fail(api, std::string("SparseFFN: ") + kInputNames[i] + " must be [" +
                           (i == kXC ? "d_in" : "d_ff") + "] = [" + std::to_string(n) + "]");
  }
  if (c->present[kXC] && c->present[kWU])
    return Fail(api, "SparseFFN: XC is only for dense FFNs (a gated FFN's up projection has no bias "
                     "to hold its share)");
  for (int i : {kPA, kPB, kPC})
    if (rows != c->present[i])
      return Fail(api, std::string("input ") + kInputNames[i] + " is " +
                           (rows ? "required by mode predictor" : "only for mode predictor"));
  if (rows) {
    const auto &pa = c->in[kPA].dims, &pb = c->in[kPB].dims, &pc = c->in[kPC].dims;
    if (pa.size() != 2 || pb.size() != 2 || pc.size() != 1 || pa[0] != c->d_in ||
        pb[0] != pa[1] || pb[1] != c->d_ff || pc[0] != c->d_ff)
      return Fail(api, "SparseFFN: predictor shapes must be PA [d_in, r], PB [r, d_ff], PC [d_ff]");
  }
  c->weight_dtype = WeightDtype(c->in, c->present, kNumInputs, kInputNames);
  if (c->weight_dtype == "mixed") return Fail(api, "SparseFFN: W1, W2 and WU differ in type");
  c->tokens = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) c->tokens *= xd[i];
  std::vector<int64_t> ydims(xd.begin(), xd.end());
  ydims.back() = c->d_out;
  OrtValue* y = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &y)) return st;
  if (c->tokens == 0) return nullptr;
  return api->GetTensorMutableData(y, &c->y);
}

OrtStatus* PrepareFff(const OrtApi* api, OrtKernelContext* ctx, FffCall* c) {
  for (int i = 0; i < 4; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) return Fail(api, std::string("FastFeedForward needs input ") + kFffNames[i]);
    if (OrtStatus* st = View(api, v, &c->in[i], kFffNames[i])) return st;
  }
  const auto& xd = c->in[0].dims;
  if (xd.empty() || c->in[1].dims.size() != 2 || c->in[2].dims.size() != 1 ||
      c->in[3].dims.size() != 2)
    return Fail(api, "FastFeedForward: expected X [..., d_in], W_in [K·n, d_in], B_in [K·n], "
                     "W_out [K·n, d_out]");
  c->d_in = xd.back();
  c->nodes = c->in[1].dims[0];
  c->d_out = c->in[3].dims[1];
  if (c->in[1].dims[1] != c->d_in || c->in[2].dims[0] != c->nodes || c->in[3].dims[0] != c->nodes)
    return Fail(api, "FastFeedForward: weight shapes do not agree with X and each other");
  const bool all[4] = {true, true, true, true};
  c->weight_dtype = WeightDtype(c->in, all, 4, kFffNames);
  if (c->weight_dtype == "mixed") return Fail(api, "FastFeedForward: W_in and W_out differ in type");
  c->tokens = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) c->tokens *= xd[i];
  std::vector<int64_t> ydims(xd.begin(), xd.end());
  ydims.back() = c->d_out;
  OrtValue* y = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &y)) return st;
  if (c->tokens == 0) return nullptr;
  return api->GetTensorMutableData(y, &c->y);
}

std::string Describe(const Attrs& a, const FfnCall& c) {
  return "SparseFFN(activation=" + a.activation + ", up_activation=" + a.up_activation +
         ", mode=" + TableMode(a, c) + ", d_in=" + std::to_string(c.d_in) + ", d_ff=" +
         std::to_string(c.d_ff) + ", d_out=" + std::to_string(c.d_out) +
         ", B1=" + (c.present[kB1] ? "yes" : "no") + ", B2=" + (c.present[kB2] ? "yes" : "no") +
         ", WU=" + (c.present[kWU] ? "yes" : "no") + ")";
}

std::string TableMode(const Attrs& a, const FfnCall& c) {
  if (a.mode != "teal" || (!c.present[kXC] && !c.present[kHC])) return a.mode;
  return a.mode + "/" + (c.present[kXC] ? "x" : "") + (c.present[kHC] ? "h" : "");
}

bool Matches(const Attrs& a, const FfnCall& c, const char* activation, const char* up_activation,
             const char* mode, int32_t has_b1, int32_t has_b2, int32_t gated, int64_t d_in,
             int64_t d_ff, int64_t d_out, int64_t min_tokens, int64_t max_tokens) {
  return a.activation == activation && a.up_activation == up_activation && TableMode(a, c) == mode &&
         has_b1 == c.present[kB1] && has_b2 == c.present[kB2] && gated == c.present[kWU] &&
         d_in == c.d_in && d_ff == c.d_ff && d_out == c.d_out && min_tokens <= c.tokens &&
         c.tokens <= max_tokens;
}

namespace {

OrtCustomOp* NewOp(const OrtApi* api, const char* name, const char* ep, size_t inputs,
                   OpWithFactory::Kind kind, KernelFactory factory,
                   const char* const* input_names) {
  g_api = api;
  auto* holder = new OpWithFactory;  // must outlive every session: never freed
  OrtCustomOp& op = holder->op;
  std::memset(&op, 0, sizeof(op));
  holder->ep = ep;
  holder->name = name;
  holder->inputs = inputs;
  holder->kind = kind;
  holder->factory = factory;
  holder->input_names = input_names;
  op.version = kOrtApiVersion;
  op.GetName = GetName;
  op.GetExecutionProviderType = GetEp;
  op.GetInputType = InputType;
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
  return &holder->op;
}

}  // namespace

OrtCustomOp* NewSparseFfnOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, "SparseFFN", ep, kNumInputs, OpWithFactory::kSparse, factory, kInputNames);
}

OrtCustomOp* NewFastFeedForwardOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, "FastFeedForward", ep, 4, OpWithFactory::kFff, factory, kFffNames);
}

OrtCustomOp* NewRoutedFfnOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, "RoutedFFN", ep, kRoutedInputs, OpWithFactory::kRouted, factory,
               kRoutedNames);
}

OrtCustomOp* NewStructuredFfnOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, "StructuredFFN", ep, kStructuredInputs, OpWithFactory::kStructured, factory,
               kStructuredNames);
}

int64_t Attrs::TopK(int64_t seq) const {
  if (!KFromLength()) return k;
  int64_t v;
  if (k_divisor > 0) {
    v = seq / k_divisor;
  } else {
    // float32 product, as the exported Cast(S, float) · scale computes it
    const float prod = static_cast<float>(seq) * k_scale;
    v = static_cast<int64_t>(k_round == "ceil" ? std::ceil(prod)
                             : k_round == "floor" ? std::floor(prod) : prod);
  }
  return v > k_min ? v : k_min;
}

}  // namespace fffc
