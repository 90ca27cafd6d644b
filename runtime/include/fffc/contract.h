// Generated from fffc/contract/ops.py by fffc/package/contract_header.py; do not edit.
// The ai.fffc operators as the shim sees them: per op its inputs in order (index
// constants, names, optional and weight flags) and its attributes (names, defaults,
// choices, an enum class of each attribute's choices); weights are the inputs that
// may be stored as float16 or bfloat16, codes those that may hold uint8 (integer
// weight codes, zero points).
#ifndef FFFC_CONTRACT_H_
#define FFFC_CONTRACT_H_

#include <cstdint>

namespace fffc::contract {

inline constexpr const char kDomain[] = "ai.fffc";
inline constexpr int kOpsetVersion = 1;
// The ONNX Runtime C API version the shim asks for (ONNX Runtime 1.N serves up to N).
inline constexpr uint32_t kOrtApiVersion = 17;
inline constexpr const char kOrtMinRelease[] = "1.17";

// What code that handles every op alike reads of one op.
struct OpContract {
  const char* name;
  int num_inputs;
  const char* const* input_names;
  const bool* optional;
  const bool* weight;
  const bool* codes;
  int num_outputs;
};

// An attribute with the value an absent one has; choices (when not null) are all it
// may take.
struct StringAttribute {
  const char* name;
  const char* default_value;
  const char* const* choices;
  int num_choices;
};
struct IntAttribute {
  const char* name;
  int64_t default_value;
};
struct FloatAttribute {
  const char* name;
  float default_value;
};
struct FloatsAttribute {
  const char* name;
  const float* default_value;
  int count;
};

// The op and the attribute that choice enum E (e.g. SparseFFN::Mode) is read from; E's
// values are its choices in order.
template <class E>
struct Choices;

// The choice an enum value stands for (its kernel-table key and its name in messages).
template <class E>
constexpr const char* Name(E value) {
  return Choices<E>::kAttribute.choices[static_cast<int>(value)];
}

// How an op's weight matrices are stored (fffc.contract.kinds.WeightDtype: float values,
// or integer codes of SparseFFN's bits); Name gives the kernel tables' weight_dtype.
enum class WeightDtype : int {kFloat32, kFloat16, kBfloat16, kInt4, kInt8};
inline constexpr const char* const kWeightDtypeNames[] = {"float32", "float16", "bfloat16", "int4",
      "int8"};
constexpr const char* Name(WeightDtype value) {
  return kWeightDtypeNames[static_cast<int>(value)];
}

// ai.fffc::SparseFFN, version 1.
struct SparseFFN {
  static constexpr const char kName[] = "SparseFFN";
  enum Input : int { kX, kW1, kB1, kW2, kB2, kWU, kTH, kPA, kPB, kPC, kXC, kHC, kW1S, kW1Z, kW2S, kW2Z, kWUS, kWUZ, kAQ };
  static constexpr int kNumInputs = 19;
  static constexpr int kNumOutputs = 1;
  static constexpr const char* const kInputNames[kNumInputs] = {"X", "W1", "B1", "W2", "B2", "WU",
      "TH", "PA", "PB", "PC", "XC", "HC", "W1S", "W1Z", "W2S", "W2Z", "WUS", "WUZ", "AQ"};
  static constexpr bool kOptional[kNumInputs] = {false, false, true, false, true, true, true, true,
      true, true, true, true, true, true, true, true, true, true, true};
  static constexpr bool kWeight[kNumInputs] = {false, true, false, true, false, true, false, false,
      false, false, false, false, false, false, false, false, false, false, false};
  static constexpr bool kCodes[kNumInputs] = {false, true, false, true, false, true, false, false,
      false, false, false, false, false, true, false, true, false, true, false};
  static constexpr OpContract kContract = {kName, kNumInputs, kInputNames, kOptional, kWeight,
      kCodes, kNumOutputs};
  enum class Activation : int {kRelu, kGelu, kGeluTanh, kSilu};
  static constexpr const char* const kActivationChoices[] = {"relu", "gelu", "gelu_tanh", "silu"};
  static constexpr StringAttribute kActivation = {"activation", "relu", kActivationChoices, 4};
  enum class UpActivation : int {kNone, kRelu};
  static constexpr const char* const kUpActivationChoices[] = {"none", "relu"};
  static constexpr StringAttribute kUpActivation = {"up_activation", "none", kUpActivationChoices,
      2};
  enum class Mode : int {kExact, kTeal, kCats, kPredictor};
  static constexpr const char* const kModeChoices[] = {"exact", "teal", "cats", "predictor"};
  static constexpr StringAttribute kMode = {"mode", "exact", kModeChoices, 4};
  static constexpr IntAttribute kBits = {"bits", 0};
  static constexpr IntAttribute kAccuracyLevel = {"accuracy_level", 0};
};
template <> struct Choices<SparseFFN::Activation> {
  static constexpr const char* kOp = SparseFFN::kName;
  static constexpr const StringAttribute& kAttribute = SparseFFN::kActivation;
};
template <> struct Choices<SparseFFN::UpActivation> {
  static constexpr const char* kOp = SparseFFN::kName;
  static constexpr const StringAttribute& kAttribute = SparseFFN::kUpActivation;
};
template <> struct Choices<SparseFFN::Mode> {
  static constexpr const char* kOp = SparseFFN::kName;
  static constexpr const StringAttribute& kAttribute = SparseFFN::kMode;
};

// ai.fffc::FastFeedForward, version 1.
struct FastFeedForward {
  static constexpr const char kName[] = "FastFeedForward";
  enum Input : int { kX, kWIn, kBIn, kWOut };
  static constexpr int kNumInputs = 4;
  static constexpr int kNumOutputs = 1;
  static constexpr const char* const kInputNames[kNumInputs] = {"X", "W_in", "B_in", "W_out"};
  static constexpr bool kOptional[kNumInputs] = {false, false, false, false};
  static constexpr bool kWeight[kNumInputs] = {false, true, false, true};
  static constexpr bool kCodes[kNumInputs] = {false, false, false, false};
  static constexpr OpContract kContract = {kName, kNumInputs, kInputNames, kOptional, kWeight,
      kCodes, kNumOutputs};
  static constexpr IntAttribute kTrees = {"trees", 1};
  static constexpr IntAttribute kDepth = {"depth", 11};
  enum class Activation : int {kGelu};
  static constexpr const char* const kActivationChoices[] = {"gelu"};
  static constexpr StringAttribute kActivation = {"activation", "gelu", kActivationChoices, 1};
  enum class TieBreak : int {kGt, kGe};
  static constexpr const char* const kTieBreakChoices[] = {"gt", "ge"};
  static constexpr StringAttribute kTieBreak = {"tie_break", "gt", kTieBreakChoices, 2};
};
template <> struct Choices<FastFeedForward::Activation> {
  static constexpr const char* kOp = FastFeedForward::kName;
  static constexpr const StringAttribute& kAttribute = FastFeedForward::kActivation;
};
template <> struct Choices<FastFeedForward::TieBreak> {
  static constexpr const char* kOp = FastFeedForward::kName;
  static constexpr const StringAttribute& kAttribute = FastFeedForward::kTieBreak;
};

// ai.fffc::StructuredFFN, version 1.
struct StructuredFFN {
  static constexpr const char kName[] = "StructuredFFN";
  enum Input : int { kX, kA1, kU1, kB1, kA2, kU2, kB2, kM1, kM2, kS1, kS2 };
  static constexpr int kNumInputs = 11;
  static constexpr int kNumOutputs = 1;
  static constexpr const char* const kInputNames[kNumInputs] = {"X", "A1", "U1", "B1", "A2", "U2",
      "B2", "M1", "M2", "S1", "S2"};
  static constexpr bool kOptional[kNumInputs] = {false, false, true, true, false, true, true, true,
      true, true, true};
  static constexpr bool kWeight[kNumInputs] = {false, true, true, false, true, true, false, false,
      false, true, true};
  static constexpr bool kCodes[kNumInputs] = {false, false, false, false, false, false, false,
      false, false, false, false};
  static constexpr OpContract kContract = {kName, kNumInputs, kInputNames, kOptional, kWeight,
      kCodes, kNumOutputs};
  enum class Activation : int {kRelu, kGelu, kGeluTanh, kSilu};
  static constexpr const char* const kActivationChoices[] = {"relu", "gelu", "gelu_tanh", "silu"};
  static constexpr StringAttribute kActivation = {"activation", "gelu", kActivationChoices, 4};
  static constexpr IntAttribute kMergedMaxTokens = {"merged_max_tokens", 0};
};
template <> struct Choices<StructuredFFN::Activation> {
  static constexpr const char* kOp = StructuredFFN::kName;
  static constexpr const StringAttribute& kAttribute = StructuredFFN::kActivation;
};

// ai.fffc::RoutedFFN, version 1.
struct RoutedFFN {
  static constexpr const char kName[] = "RoutedFFN";
  enum Input : int { kX, kWR, kBR, kW1, kB1, kW2, kB2, kWA, kBA, kLS, kLB };
  static constexpr int kNumInputs = 11;
  static constexpr int kNumOutputs = 1;
  static constexpr const char* const kInputNames[kNumInputs] = {"X", "WR", "BR", "W1", "B1", "W2",
      "B2", "WA", "BA", "LS", "LB"};
  static constexpr bool kOptional[kNumInputs] = {false, false, true, false, true, false, true, true,
      true, true, true};
  static constexpr bool kWeight[kNumInputs] = {false, false, false, true, false, true, false, false,
      false, false, false};
  static constexpr bool kCodes[kNumInputs] = {false, false, false, false, false, false, false,
      false, false, false, false};
  static constexpr OpContract kContract = {kName, kNumInputs, kInputNames, kOptional, kWeight,
      kCodes, kNumOutputs};
  enum class Activation : int {kRelu, kGelu, kGeluTanh, kSilu};
  static constexpr const char* const kActivationChoices[] = {"relu", "gelu", "gelu_tanh", "silu"};
  static constexpr StringAttribute kActivation = {"activation", "gelu", kActivationChoices, 4};
  enum class Selection : int {kTopk, kThreshold};
  static constexpr const char* const kSelectionChoices[] = {"topk", "threshold"};
  static constexpr StringAttribute kSelection = {"selection", "topk", kSelectionChoices, 2};
  static constexpr IntAttribute kK = {"k", 1};
  static constexpr FloatAttribute kKScale = {"k_scale", 0.0f};
  static constexpr IntAttribute kKDivisor = {"k_divisor", 0};
  enum class KRound : int {kTrunc, kFloor, kCeil};
  static constexpr const char* const kKRoundChoices[] = {"trunc", "floor", "ceil"};
  static constexpr StringAttribute kKRound = {"k_round", "trunc", kKRoundChoices, 3};
  static constexpr IntAttribute kKMin = {"k_min", 0};
  enum class Router : int {kRaw, kSigmoid};
  static constexpr const char* const kRouterChoices[] = {"raw", "sigmoid"};
  static constexpr StringAttribute kRouter = {"router", "raw", kRouterChoices, 2};
  static constexpr float kXCoefDefault[] = {1.0f, 0.0f};
  static constexpr FloatsAttribute kXCoef = {"x_coef", kXCoefDefault, 2};
  static constexpr float kDeltaCoefDefault[] = {0.0f, 1.0f};
  static constexpr FloatsAttribute kDeltaCoef = {"delta_coef", kDeltaCoefDefault, 2};
  static constexpr FloatAttribute kEpsilon = {"epsilon", 1e-05f};
};
template <> struct Choices<RoutedFFN::Activation> {
  static constexpr const char* kOp = RoutedFFN::kName;
  static constexpr const StringAttribute& kAttribute = RoutedFFN::kActivation;
};
template <> struct Choices<RoutedFFN::Selection> {
  static constexpr const char* kOp = RoutedFFN::kName;
  static constexpr const StringAttribute& kAttribute = RoutedFFN::kSelection;
};
template <> struct Choices<RoutedFFN::KRound> {
  static constexpr const char* kOp = RoutedFFN::kName;
  static constexpr const StringAttribute& kAttribute = RoutedFFN::kKRound;
};
template <> struct Choices<RoutedFFN::Router> {
  static constexpr const char* kOp = RoutedFFN::kName;
  static constexpr const StringAttribute& kAttribute = RoutedFFN::kRouter;
};

}  // namespace fffc::contract

#endif  // FFFC_CONTRACT_H_
