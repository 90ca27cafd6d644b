// What every execution provider's ops share: attributes, input checks, output allocation,
// and the OrtCustomOp boilerplate. Kernels differ only in how they run.
#ifndef FFFC_OP_COMMON_H_
#define FFFC_OP_COMMON_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ort_api.h"

namespace fffc {

// The ops' inputs (index constants, names, optional and weight flags) and attributes.
using Sparse = contract::SparseFFN;
using Fff = contract::FastFeedForward;
using Structured = contract::StructuredFFN;
using Routed = contract::RoutedFFN;

using contract::Name;  // a choice enum's or a WeightDtype's name (kernel-table key, messages)
using contract::WeightDtype;

// Each op's attributes, set by Read when its kernel is created (absent ones: the contract's
// defaults; a choice outside the contract's throws std::runtime_error naming it).
struct SparseAttrs {
  Sparse::Activation activation{};
  Sparse::UpActivation up_activation{};
  Sparse::Mode mode{};
  // whether ONNX Runtime reported W1 / B1 constant (initializers) at kernel creation: what
  // lets the CPU kernel derive per-weight data once (cpu/screen.h)
  bool constant_w1 = false, constant_b1 = false;
  bool screen = true;  // FFFC_EXACT_SCREEN=0 when the kernel was created: no float16 screen
  int64_t bits = 0;  // 0 float weights, 4 int4 codes with scales, 8 int8 codes
  int64_t accuracy_level = 0;  // bits 4: kInt8Accuracy rounds x to int8 per block
  static SparseAttrs Read(const OrtApi* api, const OrtKernelInfo* info);
};

struct FffAttrs {
  Fff::Activation activation{};
  Fff::TieBreak tie_break{};
  int64_t trees = 1, depth = 0;
  // The kernel table's mode: "<trees>x<depth>", "ge" appended for tie_break ge
  // (fffc.ops.fff_mode); table_mode holds it, composed when the kernel is created.
  std::string TableMode() const;
  std::string table_mode;
  static FffAttrs Read(const OrtApi* api, const OrtKernelInfo* info);
};

struct StructuredAttrs {
  Structured::Activation activation{};
  int64_t merged_max_tokens = 0;  // calls up to this many tokens use M1/M2
  static StructuredAttrs Read(const OrtApi* api, const OrtKernelInfo* info);
};

struct RoutedAttrs {
  Routed::Activation activation{};
  Routed::Selection selection{};
  Routed::Router router{};
  int64_t k = 0;
  // k from the sequence length S (an export with a dynamic sequence axis; fffc.ops.capacity_k):
  // round(float(S)·k_scale) (k_round: trunc, floor, ceil) or S / k_divisor, then max(·, k_min)
  float k_scale = 0.f;
  int64_t k_divisor = 0, k_min = 0;
  Routed::KRound k_round{};
  bool KFromLength() const { return k_scale > 0.f || k_divisor > 0; }
  int64_t TopK(int64_t seq) const;
  float coef[4] = {};  // the combine's coefficients [x_a, x_b, delta_a, delta_b]
  float epsilon = 0.f;  // LayerNorm epsilon of a pre-norm routed block
  static RoutedAttrs Read(const OrtApi* api, const OrtKernelInfo* info);
};

inline constexpr int64_t kInt8Accuracy = 4;  // MatMulNBits' accuracy_level of int8 x

struct TensorView {
  const OrtValue* value = nullptr;
  std::vector<int64_t> dims;
  void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};

// The element type of the present weight matrices among the inputs of `op` (its weight
// flags; the CUDA kernels read them as stored, the CPU kernels widen them: WidenedWeights),
// float32 when there are none; UNDEFINED when they differ.
ONNXTensorElementDataType WeightElementType(const TensorView* in, const bool* present,
                                            const contract::OpContract& op);

// The storage of weight matrices of element type `type` (float32, float16 or bfloat16; not
// UNDEFINED): its float format, or for uint8 codes their width `bits` (4 or 8).
WeightDtype StorageOf(ONNXTensorElementDataType type, int64_t bits = 0);

// One SparseFFN call: inputs by position, the shape it resolves to, and its output.
struct FfnCall {
  TensorView in[Sparse::kNumInputs];
  bool present[Sparse::kNumInputs] = {false};
  int64_t d_in = 0, d_ff = 0, d_out = 0, tokens = 0;
  WeightDtype weight_dtype = WeightDtype::kFloat32;  // of W1, W2, WU (kInt4, kInt8 for codes)
  int64_t block = 0;  // int4 / int8 weights: codes per scale (0: float weights)
  int64_t bits = 0;  // the codes' width: 4 (two a byte) or 8 (one a byte); 0: float weights
  void* y = nullptr;  // output data (tokens × d_out), allocated by Prepare
};

// One FastFeedForward call: X, W_in [K·n, d_in], B_in [K·n], W_out [K·n, d_out].
struct FffCall {
  TensorView in[Fff::kNumInputs];
  int64_t d_in = 0, nodes = 0, d_out = 0, tokens = 0;
  WeightDtype weight_dtype = WeightDtype::kFloat32;  // of W_in, W_out
  void* y = nullptr;  // output data (tokens × d_out), allocated by PrepareFff
};

// Reads and checks the inputs, allocates Y; on tokens == 0 leaves y null.
OrtStatus* PrepareFff(const OrtApi* api, OrtKernelContext* ctx, FffCall* call);

OrtStatus* Fail(const OrtApi* api, const std::string& msg);

// Type, shape and data of a float32 input, of a weight matrix (`weight`) in float32,
// float16 or bfloat16, or of an input that may hold uint8 (`codes`); an error names the
// input otherwise.
OrtStatus* View(const OrtApi* api, const OrtValue* v, TensorView* out, const char* name,
                bool weight, bool codes);

// View of every present input of `op`; present[i] says which.
OrtStatus* ViewInputs(const OrtApi* api, OrtKernelContext* ctx, const contract::OpContract& op,
                      TensorView* in, bool* present);

// Reads and checks the inputs, allocates Y; on tokens == 0 leaves y null. ``mode`` decides
// W1's layout ([d_in, d_ff]; predictor: [d_ff, d_in]) and which optional inputs it needs;
// ``bits`` 4 or 8: the weights are integer codes with scales (the op text's layouts).
OrtStatus* Prepare(const OrtApi* api, OrtKernelContext* ctx, FfnCall* call, Sparse::Mode mode,
                   int64_t bits);

// Which kernel table a SparseFFN call is looked up in, and for which kernel: the CPU table
// keys a predictor's kernels by its rank too ("predictor/<rank>"), and holds the screened
// exact kernel as "exact/screened"; the CUDA table keys neither.
enum class SparseTable : int { kCpu, kCpuScreened, kCuda };

// The kernel table's mode of a call: the mode's name; a predictor's rank after it (CPU
// table); for a centered teal call "teal/x", "teal/h" or "teal/xh" (which of XC, HC it has;
// fffc.ops.KernelSpec.centers); for int4 weights "<mode>/q4b<block>" ("q8b" for int8 codes),
// "z" appended with zero points, "i8" with x rounded to int8 (fffc.codegen.registry's
// table_mode, the one place these names are composed for SparseFFN).
std::string TableMode(const SparseAttrs& a, const FfnCall& c, SparseTable table);

// "SparseFFN(activation=..., d_in=..., ...)" for error messages (mode: TableMode).
std::string Describe(const SparseAttrs& a, const FfnCall& c, const std::string& mode);

// True when a kernel table row (spec fields) serves this call (`mode`: its TableMode).
bool Matches(const SparseAttrs& a, const FfnCall& c, const std::string& mode,
             const char* activation, const char* up_activation, const char* row_mode,
             int32_t has_b1, int32_t has_b2, int32_t gated, int64_t d_in, int64_t d_ff,
             int64_t d_out, int64_t min_tokens, int64_t max_tokens);

// Float32 copies of 16-bit weights for the CPU kernels (a --weight-dtype CUDA artifact run
// on the CPU EP): made once per weight — the weights are initializers, constant for the
// kernel's life — and shared by every call.
class WidenedWeights {
 public:
  // Points each float16 / bfloat16 input among in[0..n) at its float32 copy.
  void Apply(TensorView* in, int n);

 private:
  std::mutex mutex_;
  std::map<const void*, std::vector<float>> copies_;
};

// A kernel instance of one op on one execution provider (thread-safe Compute).
struct KernelBase {
  const OrtApi* api;
  WidenedWeights widened;  // CPU kernels only
  virtual ~KernelBase() = default;
  virtual OrtStatus* Compute(OrtKernelContext* ctx) = 0;
};

// A kernel of an op whose attributes are A (SparseAttrs, FffAttrs, ...).
template <class A>
struct Kernel : KernelBase {
  using Attributes = A;
  A attrs;
};

// Creates a kernel for a node (throws std::runtime_error on a bad attribute).
using KernelFactory = KernelBase* (*)(const OrtApi* api, const OrtKernelInfo* info);

// The KernelFactory of a Kernel<A> subclass: its attributes read once, by A::Read.
template <class K>
KernelBase* MakeKernel(const OrtApi* api, const OrtKernelInfo* info) {
  typename K::Attributes attrs = K::Attributes::Read(api, info);
  auto* k = new K;
  k->api = api;
  k->attrs = std::move(attrs);
  return k;
}

// The OrtCustomOp of each op for execution provider `ep` (lives for the process): name,
// inputs and attributes from the contract, kernels from `factory`. Every op takes its weight
// matrices as float32, float16 or bfloat16 (--weight-dtype).
OrtCustomOp* NewSparseFfnOp(const OrtApi* api, const char* ep, KernelFactory factory);
OrtCustomOp* NewStructuredFfnOp(const OrtApi* api, const char* ep, KernelFactory factory);
OrtCustomOp* NewRoutedFfnOp(const OrtApi* api, const char* ep, KernelFactory factory);
OrtCustomOp* NewFastFeedForwardOp(const OrtApi* api, const char* ep, KernelFactory factory);

}  // namespace fffc

#endif  // FFFC_OP_COMMON_H_
