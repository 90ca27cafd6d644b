#include "op_common.h"

#include "half.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>

namespace fffc {
namespace {

// The attribute, or its default when the node has none.
std::string StringAttr(const OrtApi* api, const OrtKernelInfo* info,
                       const contract::StringAttribute& attr) {
  size_t size = 0;
  OrtStatus* st = api->KernelInfoGetAttribute_string(info, attr.name, nullptr, &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return attr.default_value;
  }
  std::string out(size, '\0');
  st = api->KernelInfoGetAttribute_string(info, attr.name, out.data(), &size);
  if (st != nullptr) {
    api->ReleaseStatus(st);
    return attr.default_value;
  }
  out.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return out;
}

// The choice enum E's attribute (contract::Choices<E>), or its default when the node has
// none; a value that is none of its choices throws an error naming the op, the attribute and
// the choices.
template <class E>
E Choice(const OrtApi* api, const OrtKernelInfo* info) {
  const contract::StringAttribute& attr = contract::Choices<E>::kAttribute;
  const std::string value = StringAttr(api, info, attr);
  std::string allowed;
  for (int i = 0; i < attr.num_choices; ++i) {
    if (value == attr.choices[i]) return static_cast<E>(i);
    allowed += (i == 0 ? "" : i + 1 == attr.num_choices ? " or " : ", ") +
               std::string(attr.choices[i]);
  }
  throw std::runtime_error(std::string(contract::Choices<E>::kOp) + ": " + attr.name +
                           " must be " + allowed + ", got " + value);
}

}  // namespace

OrtStatus* View(const OrtApi* api, const OrtValue* v, TensorView* out, const char* name,
                bool weight, bool codes) {
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
  const bool uint8 = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && !(narrow && weight) && !(uint8 && codes))
    return Fail(api, std::string("input ") + name + " must be " +
                         (weight ? "float32, float16, bfloat16" : "float32") +
                         (codes ? " or uint8" : ""));
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

ONNXTensorElementDataType WeightElementType(const TensorView* in, const bool* present,
                                            const contract::OpContract& op) {
  ONNXTensorElementDataType out = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  for (int i = 0; i < op.num_inputs; ++i) {
    if (!present[i] || !op.weight[i]) continue;
    if (out != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && out != in[i].type)
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    out = in[i].type;
  }
  return out == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : out;
}

WeightDtype StorageOf(ONNXTensorElementDataType type, int64_t bits) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return WeightDtype::kFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return WeightDtype::kBfloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
      return bits == 8 ? WeightDtype::kInt8 : WeightDtype::kInt4;
    default: return WeightDtype::kFloat32;
  }
}

OrtStatus* ViewInputs(const OrtApi* api, OrtKernelContext* ctx, const contract::OpContract& op,
                      TensorView* in, bool* present) {
  size_t count = 0;
  if (OrtStatus* st = api->KernelContext_GetInputCount(ctx, &count)) return st;
  for (size_t i = 0; i < count && i < static_cast<size_t>(op.num_inputs); ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr) continue;  // an omitted optional input
    if (OrtStatus* st = View(api, v, &in[i], op.input_names[i], op.weight[i], op.codes[i]))
      return st;
    present[i] = true;
  }
  return nullptr;
}

namespace {

// The OrtCustomOp with what CreateKernelV2 needs to build this EP's kernel.
struct OpWithFactory {
  OrtCustomOp op;  // first member: the OrtCustomOp* ORT passes back points here
  const char* ep;
  const contract::OpContract* contract;  // name, inputs (optional, weight), outputs
  KernelFactory factory;
};

const OpWithFactory* Holder(const OrtCustomOp* op) {
  return reinterpret_cast<const OpWithFactory*>(op);
}

int64_t IntAttr(const OrtApi* api, const OrtKernelInfo* info, const contract::IntAttribute& attr) {
  int64_t out = attr.default_value;
  if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, attr.name, &out)) {
    api->ReleaseStatus(st);
    return attr.default_value;
  }
  return out;
}

float FloatAttr(const OrtApi* api, const OrtKernelInfo* info,
                const contract::FloatAttribute& attr) {
  float out = attr.default_value;
  if (OrtStatus* st = api->KernelInfoGetAttribute_float(info, attr.name, &out)) {
    api->ReleaseStatus(st);
    return attr.default_value;
  }
  return out;
}

// The attribute's attr.count floats into out (its default when absent; any other length is
// an error).
void FloatsAttr(const OrtApi* api, const OrtKernelInfo* info,
                const contract::FloatsAttribute& attr, float* out) {
  for (int i = 0; i < attr.count; ++i) out[i] = attr.default_value[i];
  size_t size = 0;
  if (OrtStatus* st = api->KernelInfoGetAttributeArray_float(info, attr.name, nullptr, &size)) {
    api->ReleaseStatus(st);
    return;
  }
  if (size != static_cast<size_t>(attr.count))
    throw std::runtime_error(std::string("attribute ") + attr.name + " must hold " +
                             std::to_string(attr.count) + " floats");
  if (OrtStatus* st = api->KernelInfoGetAttributeArray_float(info, attr.name, out, &size)) {
    api->ReleaseStatus(st);
    throw std::runtime_error(std::string("attribute ") + attr.name + " could not be read");
  }
}

const OrtApi* g_api = nullptr;

const char* GetName(const OrtCustomOp* op) { return Holder(op)->contract->name; }
const char* GetEp(const OrtCustomOp* op) { return Holder(op)->ep; }
ONNXTensorElementDataType FloatType(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
// Weights of any type (View accepts float32, float16, bfloat16), everything else float32.
ONNXTensorElementDataType InputType(const OrtCustomOp* op, size_t i) {
  const contract::OpContract* c = Holder(op)->contract;
  return c->weight[i] || c->codes[i] ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED
                                     : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t InputCount(const OrtCustomOp* op) { return Holder(op)->contract->num_inputs; }
size_t OutputCount(const OrtCustomOp* op) { return Holder(op)->contract->num_outputs; }
OrtCustomOpInputOutputCharacteristic InputChar(const OrtCustomOp* op, size_t i) {
  return Holder(op)->contract->optional[i] ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
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
    *kernel = Holder(op)->factory(a, info);
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

OrtStatus* Fail(const OrtApi* api, const std::string& msg) {
  return api->CreateStatus(ORT_FAIL, ("fffc: " + msg).c_str());
}

namespace {

std::string Dims(const std::vector<int64_t>& d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out += (i ? ", " : "") + std::to_string(d[i]);
  return out + "]";
}

int64_t Count(const std::vector<int64_t>& d) {
  int64_t n = 1;
  for (int64_t v : d) n *= v;
  return n;
}

// The int4 shapes of mode teal (fffc.contract.int4.column_projections): W1 and WU per input
// channel, codes [d_in, d_ff/2], scales and zero points [d_in/block, d_ff] (d_ff and the
// block from W2 and its scales).
OrtStatus* PrepareChannels(const OrtApi* api, FfnCall* c) {
  using In = Sparse;
  const auto &xd = c->in[In::kX].dims, &w1 = c->in[In::kW1].dims, &w2 = c->in[In::kW2].dims,
             &w2s = c->in[In::kW2S].dims;
  if (xd.empty() || w1.size() != 2 || w2.size() != 2 || w2s.size() != 2 || w2s[0] < 1 ||
      w2[0] < w2s[0] || w2[0] % w2s[0])
    return Fail(api, "SparseFFN (bits 4, mode teal): expected X [..., d_in], W1 [d_in, d_ff/2], "
                     "W2 [d_ff, d_out/2], W2S [d_ff/block, d_out]; got W1 " + Dims(w1) + ", W2 " +
                     Dims(w2) + ", W2S " + Dims(w2s));
  c->d_in = xd.back();
  c->d_ff = w2[0];
  c->d_out = w2s[1];
  c->block = c->d_ff / w2s[0];
  const int64_t per_channel = c->d_in % c->block ? -1 : c->d_in / c->block * c->d_ff;
  const bool z = c->present[In::kW1Z];
  std::string bad;
  if (c->d_in % c->block || w1[0] != c->d_in || 2 * w1[1] != c->d_ff)
    bad = "W1 " + Dims(w1) + " for d_in " + std::to_string(c->d_in) + ", d_ff " + std::to_string(c->d_ff);
  else if (2 * w2[1] != c->d_out) bad = "W2 " + Dims(w2) + " with W2S " + Dims(w2s);
  else if (Count(c->in[In::kW1S].dims) != per_channel) bad = "W1S " + Dims(c->in[In::kW1S].dims);
  else if (z && Count(c->in[In::kW1Z].dims) != per_channel) bad = "W1Z " + Dims(c->in[In::kW1Z].dims);
  else if (c->present[In::kW2Z] != z || (c->present[In::kWU] && c->present[In::kWUZ] != z))
    bad = "zero points given for some weights only";
  else if (z && Count(c->in[In::kW2Z].dims) != w2s[0] * c->d_out) bad = "W2Z " + Dims(c->in[In::kW2Z].dims);
  else if (c->present[In::kWU] && c->in[In::kWU].dims != w1) bad = "WU " + Dims(c->in[In::kWU].dims);
  else if (c->present[In::kWU] && Count(c->in[In::kWUS].dims) != per_channel)
    bad = "WUS " + Dims(c->in[In::kWUS].dims);
  else if (c->present[In::kWUZ] && Count(c->in[In::kWUZ].dims) != per_channel)
    bad = "WUZ " + Dims(c->in[In::kWUZ].dims);
  if (!bad.empty())
    return Fail(api, "SparseFFN (bits 4, block " + std::to_string(c->block) + ", mode teal): bad int4 weights: " + bad);
  return nullptr;
}

// The shapes of the other calls: W1 and WU as MatMulNBits holds them, codes [d_ff, d_in/block,
// block·bits/8], scales [d_ff, d_in/block], zero points packed like the codes (two a byte with
// bits 4, one with bits 8); W2 per neuron, codes [d_ff, d_out·bits/8], scales and zero points
// (one a byte) [d_ff/block, d_out].
OrtStatus* PrepareRows(const OrtApi* api, FfnCall* c, int64_t bits) {
  using In = Sparse;
  const int64_t per_byte = bits == 8 ? 1 : 2;
  const auto &xd = c->in[In::kX].dims, &w1 = c->in[In::kW1].dims, &w2 = c->in[In::kW2].dims,
             &w2s = c->in[In::kW2S].dims;
  if (xd.empty() || w1.size() != 3 || w2.size() != 2 || w2s.size() != 2 || w1[2] < 1)
    return Fail(api, "SparseFFN (bits " + std::to_string(bits) + "): expected X [..., d_in], W1 "
                     "[d_ff, d_in/block, block·bits/8], W2 [d_ff, d_out·bits/8], W2S [d_ff/block, "
                     "d_out]; got W1 " + Dims(w1) + ", W2 " + Dims(w2) + ", W2S " + Dims(w2s));
  c->block = per_byte * w1[2];
  c->d_in = xd.back();
  c->d_ff = w1[0];
  c->d_out = w2s[1];
  const int64_t kb = c->d_in / c->block, groups = c->d_ff / c->block;
  const int64_t kz = (kb + per_byte - 1) / per_byte;  // zero point bytes of a row
  const bool z = c->present[In::kW1Z];
  std::string bad;
  if (c->d_in % c->block || w1[1] != kb) bad = "W1 " + Dims(w1) + " for d_in " + std::to_string(c->d_in);
  else if (c->d_ff % c->block || w2s[0] != groups || w2[0] != c->d_ff || per_byte * w2[1] != c->d_out)
    bad = "W2 " + Dims(w2) + " with W2S " + Dims(w2s);
  else if (Count(c->in[In::kW1S].dims) != c->d_ff * kb) bad = "W1S " + Dims(c->in[In::kW1S].dims);
  else if (z && Count(c->in[In::kW1Z].dims) != c->d_ff * kz)
    bad = "W1Z " + Dims(c->in[In::kW1Z].dims);
  else if (c->present[In::kW2Z] != z || (c->present[In::kWU] && c->present[In::kWUZ] != z))
    bad = "zero points given for some weights only";
  else if (z && Count(c->in[In::kW2Z].dims) != groups * c->d_out) bad = "W2Z " + Dims(c->in[In::kW2Z].dims);
  else if (c->present[In::kWU] && c->in[In::kWU].dims != w1) bad = "WU " + Dims(c->in[In::kWU].dims);
  else if (c->present[In::kWU] && Count(c->in[In::kWUS].dims) != c->d_ff * kb)
    bad = "WUS " + Dims(c->in[In::kWUS].dims);
  else if (c->present[In::kWUZ] && Count(c->in[In::kWUZ].dims) != c->d_ff * kz)
    bad = "WUZ " + Dims(c->in[In::kWUZ].dims);
  else if (c->present[In::kAQ] && Count(c->in[In::kAQ].dims) != 16)  // [4, 4]
    bad = "AQ " + Dims(c->in[In::kAQ].dims);
  if (!bad.empty())
    return Fail(api, "SparseFFN (bits " + std::to_string(bits) + ", block " + std::to_string(c->block) +
                         "): bad int" + std::to_string(bits) + " weights: " + bad);
  return nullptr;
}

// The shapes and types of an int4 or int8 call (the op text of fffc/contract/ops.py); 8-bit
// codes are for mode exact only.
OrtStatus* PrepareQuantized(const OrtApi* api, FfnCall* c, Sparse::Mode mode, int64_t bits) {
  using In = Sparse;
  if (bits != 4 && bits != 8)
    return Fail(api, "SparseFFN: bits must be 0, 4 or 8, got " + std::to_string(bits));
  if (bits == 8 && mode != Sparse::Mode::kExact)
    return Fail(api, std::string("SparseFFN: int8 weights (bits 8) are for mode exact only, not ") +
                         Name(mode));
  c->bits = bits;
  if (!c->present[In::kW1S] || !c->present[In::kW2S] || c->present[In::kWU] != c->present[In::kWUS])
    return Fail(api, "SparseFFN: bits " + std::to_string(bits) +
                         " needs the scales of each weight (W1S, W2S, WUS with WU)");
  if (OrtStatus* st = mode == Sparse::Mode::kTeal ? PrepareChannels(api, c) : PrepareRows(api, c, bits)) return st;
  std::string bad;
  for (int i : {In::kW1S, In::kW2S, In::kWUS})
    if (bad.empty() && c->present[i] && c->in[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      bad = std::string(In::kInputNames[i]) + " not float32";
  for (int i : {In::kW1Z, In::kW2Z, In::kWUZ})
    if (bad.empty() && c->present[i] && c->in[i].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
      bad = std::string(In::kInputNames[i]) + " not uint8";
  if (!bad.empty())
    return Fail(api, "SparseFFN (bits " + std::to_string(bits) + ", block " + std::to_string(c->block) +
                         "): bad int" + std::to_string(bits) + " weights: " + bad);
  return nullptr;
}

}  // namespace

OrtStatus* Prepare(const OrtApi* api, OrtKernelContext* ctx, FfnCall* c, Sparse::Mode mode,
                   int64_t bits) {
  using In = Sparse;
  if (OrtStatus* st = ViewInputs(api, ctx, Sparse::kContract, c->in, c->present))
    return st;
  if (!c->present[In::kX] || !c->present[In::kW1] || !c->present[In::kW2])
    return Fail(api, "SparseFFN: X, W1 and W2 are required");
  const auto& xd = c->in[In::kX].dims;
  if (bits != 0) {
    if (OrtStatus* st = PrepareQuantized(api, c, mode, bits)) return st;
  } else if (c->present[In::kW1S] || c->present[In::kW2S] || c->present[In::kWUS] ||
             c->present[In::kW1Z] || c->present[In::kW2Z] || c->present[In::kWUZ]) {
    return Fail(api, "SparseFFN: scales and zero points (W1S ... WUZ) are only for bits 4, 8");
  } else if (xd.empty() || c->in[In::kW1].dims.size() != 2 || c->in[In::kW2].dims.size() != 2)
    return Fail(api, "SparseFFN: expected X [..., d_in], W1 [d_in, d_ff], W2 [d_ff, d_out]");
  const bool rows = mode == Sparse::Mode::kPredictor;  // W1 [d_ff, d_in], row per neuron
  if (bits == 0) {
    c->d_in = xd.back();
    c->d_ff = c->in[In::kW1].dims[rows ? 0 : 1];
    c->d_out = c->in[In::kW2].dims[1];
  }
  if (bits == 0 && (c->in[In::kW1].dims[rows ? 1 : 0] != c->d_in || c->in[In::kW2].dims[0] != c->d_ff))
    return Fail(api, "SparseFFN: weight shapes do not chain: X [..., " + std::to_string(c->d_in) + "], W1 [" +
                         std::to_string(c->in[In::kW1].dims[0]) + ", " +
                         std::to_string(c->in[In::kW1].dims[1]) + "] (mode " + Name(mode) + "), W2 [" +
                         std::to_string(c->in[In::kW2].dims[0]) + ", " + std::to_string(c->d_out) + "]");
  const bool thresholds = mode == Sparse::Mode::kTeal || mode == Sparse::Mode::kCats;
  if (thresholds != c->present[In::kTH])
    return Fail(api, std::string("input TH (thresholds) is ") +
                         (thresholds ? std::string("required by mode ") + Name(mode)
                                     : "only for modes teal, cats"));
  if (thresholds && (c->in[In::kTH].dims.size() != 1 || c->in[In::kTH].dims[0] != 2))
    return Fail(api, "SparseFFN: TH must hold two thresholds (teal: [t_in, t_hidden]; cats: [t_in, t_gate])");
  for (int i : {In::kXC, In::kHC}) {
    if (!c->present[i]) continue;
    if (mode != Sparse::Mode::kTeal)
      return Fail(api, std::string("input ") + In::kInputNames[i] + " is only for mode teal");
    const int64_t n = i == In::kXC ? c->d_in : c->d_ff;
    if (c->in[i].dims.size() != 1 || c->in[i].dims[0] != n)
      return Fail(api, std::string("SparseFFN: ") + In::kInputNames[i] + " must be [" +
                           (i == In::kXC ? "d_in" : "d_ff") + "] = [" + std::to_string(n) + "]");
  }
  if (c->present[In::kXC] && c->present[In::kWU])
    return Fail(api, "SparseFFN: XC is only for dense FFNs (a gated FFN's up projection has no bias "
                     "to hold its share)");
  for (int i : {In::kPA, In::kPB, In::kPC})
    if (rows != c->present[i])
      return Fail(api, std::string("input ") + In::kInputNames[i] + " is " +
                           (rows ? "required by mode predictor" : "only for mode predictor"));
  if (rows) {
    const auto &pa = c->in[In::kPA].dims, &pb = c->in[In::kPB].dims,
               &pc = c->in[In::kPC].dims;
    if (pa.size() != 2 || pb.size() != 2 || pc.size() != 1 || pa[0] != c->d_in ||
        pb[0] != pa[1] || pb[1] != c->d_ff || pc[0] != c->d_ff)
      return Fail(api, "SparseFFN: predictor shapes must be PA [d_in, r], PB [r, d_ff], PC [d_ff]");
  }
  const ONNXTensorElementDataType weights = WeightElementType(c->in, c->present, Sparse::kContract);
  if (weights == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
    return Fail(api, "SparseFFN: W1, W2 and WU differ in type");
  if ((weights == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) != (bits != 0))
    return Fail(api, "SparseFFN: W1, W2 and WU must be uint8 codes exactly when bits is 4 or 8");
  c->weight_dtype = StorageOf(weights, bits);
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
  for (int i = 0; i < Fff::kNumInputs; ++i) {
    const OrtValue* v = nullptr;
    if (OrtStatus* st = api->KernelContext_GetInput(ctx, i, &v)) return st;
    if (v == nullptr)
      return Fail(api, std::string("FastFeedForward needs input ") + Fff::kInputNames[i]);
    if (OrtStatus* st = View(api, v, &c->in[i], Fff::kInputNames[i], Fff::kWeight[i],
                             Fff::kCodes[i]))
      return st;
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
  bool all[Fff::kNumInputs];
  std::fill(all, all + Fff::kNumInputs, true);  // every input is required
  const ONNXTensorElementDataType weights = WeightElementType(c->in, all, Fff::kContract);
  if (weights == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
    return Fail(api, "FastFeedForward: W_in and W_out differ in type");
  c->weight_dtype = StorageOf(weights);
  c->tokens = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) c->tokens *= xd[i];
  std::vector<int64_t> ydims(xd.begin(), xd.end());
  ydims.back() = c->d_out;
  OrtValue* y = nullptr;
  if (OrtStatus* st = api->KernelContext_GetOutput(ctx, 0, ydims.data(), ydims.size(), &y)) return st;
  if (c->tokens == 0) return nullptr;
  return api->GetTensorMutableData(y, &c->y);
}

std::string Describe(const SparseAttrs& a, const FfnCall& c, const std::string& mode) {
  return std::string("SparseFFN(activation=") + Name(a.activation) +
         ", up_activation=" + Name(a.up_activation) + ", mode=" + mode +
         ", d_in=" + std::to_string(c.d_in) + ", d_ff=" +
         std::to_string(c.d_ff) + ", d_out=" + std::to_string(c.d_out) +
         ", B1=" + (c.present[Sparse::kB1] ? "yes" : "no") +
         ", B2=" + (c.present[Sparse::kB2] ? "yes" : "no") +
         ", WU=" + (c.present[Sparse::kWU] ? "yes" : "no") +
         (c.block != 0 ? ", int" + std::to_string(c.bits) + " block " + std::to_string(c.block) : "") + ")";
}

std::string TableMode(const SparseAttrs& a, const FfnCall& c, SparseTable table) {
  std::string mode = Name(a.mode);
  if (a.mode == Sparse::Mode::kPredictor && table != SparseTable::kCuda)
    mode += "/" + std::to_string(c.in[Sparse::kPA].dims[1]);  // the rank: PA's width
  if (c.block != 0)
    return mode + "/q" + std::to_string(c.bits) + "b" + std::to_string(c.block) +
           (c.present[Sparse::kW1Z] ? "z" : "") +
           (a.accuracy_level == kInt8Accuracy ? "i8" : "") +
           (c.present[Sparse::kAQ] ? "aq" : "");
  if (table == SparseTable::kCpuScreened) return mode + "/screened";
  if (a.mode != Sparse::Mode::kTeal || (!c.present[Sparse::kXC] && !c.present[Sparse::kHC]))
    return mode;
  return mode + "/" + (c.present[Sparse::kXC] ? "x" : "") + (c.present[Sparse::kHC] ? "h" : "");
}

bool Matches(const SparseAttrs& a, const FfnCall& c, const std::string& mode,
             const char* activation, const char* up_activation, const char* row_mode,
             int32_t has_b1, int32_t has_b2, int32_t gated, int64_t d_in, int64_t d_ff,
             int64_t d_out, int64_t min_tokens, int64_t max_tokens) {
  return std::strcmp(Name(a.activation), activation) == 0 &&
         std::strcmp(Name(a.up_activation), up_activation) == 0 && mode == row_mode &&
         has_b1 == c.present[Sparse::kB1] && has_b2 == c.present[Sparse::kB2] &&
         gated == c.present[Sparse::kWU] &&
         d_in == c.d_in && d_ff == c.d_ff && d_out == c.d_out && min_tokens <= c.tokens &&
         c.tokens <= max_tokens;
}

namespace {

OrtCustomOp* NewOp(const OrtApi* api, const contract::OpContract& spec, const char* ep,
                   KernelFactory factory) {
  g_api = api;
  auto* holder = new OpWithFactory;  // must outlive every session: never freed
  OrtCustomOp& op = holder->op;
  std::memset(&op, 0, sizeof(op));
  holder->ep = ep;
  holder->contract = &spec;
  holder->factory = factory;
  op.version = contract::kOrtApiVersion;
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
  return NewOp(api, Sparse::kContract, ep, factory);
}

OrtCustomOp* NewFastFeedForwardOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, Fff::kContract, ep, factory);
}

OrtCustomOp* NewRoutedFfnOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, Routed::kContract, ep, factory);
}

OrtCustomOp* NewStructuredFfnOp(const OrtApi* api, const char* ep, KernelFactory factory) {
  return NewOp(api, Structured::kContract, ep, factory);
}

SparseAttrs SparseAttrs::Read(const OrtApi* a, const OrtKernelInfo* info) {
  SparseAttrs attrs;
  attrs.activation = Choice<Sparse::Activation>(a, info);
  attrs.up_activation = Choice<Sparse::UpActivation>(a, info);
  attrs.mode = Choice<Sparse::Mode>(a, info);
  attrs.bits = IntAttr(a, info, Sparse::kBits);
  attrs.accuracy_level = IntAttr(a, info, Sparse::kAccuracyLevel);
  attrs.constant_w1 = IsConstantInput(a, info, Sparse::kW1);
  attrs.constant_b1 = IsConstantInput(a, info, Sparse::kB1);
  const char* screen = std::getenv("FFFC_EXACT_SCREEN");
  attrs.screen = screen == nullptr || std::string(screen) != "0";
  return attrs;
}

std::string FffAttrs::TableMode() const {
  return std::to_string(trees) + "x" + std::to_string(depth) +
         (tie_break == Fff::TieBreak::kGt ? "" : Name(tie_break));
}

FffAttrs FffAttrs::Read(const OrtApi* a, const OrtKernelInfo* info) {
  FffAttrs attrs;
  attrs.activation = Choice<Fff::Activation>(a, info);
  attrs.tie_break = Choice<Fff::TieBreak>(a, info);
  attrs.trees = IntAttr(a, info, Fff::kTrees);
  attrs.depth = IntAttr(a, info, Fff::kDepth);
  attrs.table_mode = attrs.TableMode();
  return attrs;
}

StructuredAttrs StructuredAttrs::Read(const OrtApi* a, const OrtKernelInfo* info) {
  StructuredAttrs attrs;
  attrs.activation = Choice<Structured::Activation>(a, info);
  attrs.merged_max_tokens = IntAttr(a, info, Structured::kMergedMaxTokens);
  return attrs;
}

RoutedAttrs RoutedAttrs::Read(const OrtApi* a, const OrtKernelInfo* info) {
  RoutedAttrs attrs;
  attrs.activation = Choice<Routed::Activation>(a, info);
  attrs.k = IntAttr(a, info, Routed::kK);
  attrs.k_divisor = IntAttr(a, info, Routed::kKDivisor);
  attrs.k_min = IntAttr(a, info, Routed::kKMin);
  attrs.k_scale = FloatAttr(a, info, Routed::kKScale);
  attrs.k_round = Choice<Routed::KRound>(a, info);
  if (attrs.k_divisor < 0 || !(attrs.k_scale >= 0.f))
    throw std::runtime_error("RoutedFFN: k_scale and k_divisor must be >= 0");
  attrs.selection = Choice<Routed::Selection>(a, info);
  attrs.router = Choice<Routed::Router>(a, info);
  if (attrs.selection == Routed::Selection::kTopk && attrs.k < 1 && !attrs.KFromLength())
    throw std::runtime_error("RoutedFFN: k must be >= 1");
  static_assert(Routed::kXCoef.count == 2 && Routed::kDeltaCoef.count == 2);
  float x[2], d[2];
  FloatsAttr(a, info, Routed::kXCoef, x);
  FloatsAttr(a, info, Routed::kDeltaCoef, d);
  attrs.coef[0] = x[0], attrs.coef[1] = x[1], attrs.coef[2] = d[0], attrs.coef[3] = d[1];
  attrs.epsilon = FloatAttr(a, info, Routed::kEpsilon);
  return attrs;
}

int64_t RoutedAttrs::TopK(int64_t seq) const {
  if (!KFromLength()) return k;
  int64_t v = 0;
  if (k_divisor > 0) {
    v = seq / k_divisor;
  } else {
    // float32 product, as the exported Cast(S, float) · scale computes it
    const float prod = static_cast<float>(seq) * k_scale;
    switch (k_round) {
      case Routed::KRound::kCeil: v = static_cast<int64_t>(std::ceil(prod)); break;
      case Routed::KRound::kFloor: v = static_cast<int64_t>(std::floor(prod)); break;
      case Routed::KRound::kTrunc: v = static_cast<int64_t>(prod); break;
    }
  }
  return v > k_min ? v : k_min;
}

}  // namespace fffc
