// StructuredFFN and RoutedFFN calls: inputs read and checked once, shared by the CPU and the
// CUDA kernels (the kernel-table modes they look up are fffc.ops' strings).
#ifndef FFFC_STRUCTURED_CALL_H_
#define FFFC_STRUCTURED_CALL_H_

#include <cstdint>
#include <string>

#include "op_common.h"

namespace fffc {

// StructuredFFN: X, A1, U1?, B1?, A2, U2?, B2?, M1?, M2?, S1?, S2?
enum StructuredInput { kSX = 0, kSA1, kSU1, kSB1, kSA2, kSU2, kSB2, kSM1, kSM2, kSS1, kSS2,
                       kStructuredInputs };
extern const char* const kStructuredNames[kStructuredInputs];  // fffc.ops' input names

struct StructuredCall {
  TensorView in[kStructuredInputs];
  bool present[kStructuredInputs] = {false};
  int64_t d_in = 0, d_ff = 0, d_out = 0, tokens = 0;
  bool merged = false;  // the pre-merged dense path (M1/M2) serves this call
  std::string mode;     // fffc.ops.structured_kernel_spec's mode of the path taken
  std::string weight_dtype = "float32";  // of A1, U1, A2, U2, S1, S2 (WeightDtype)
  void* y = nullptr;    // output (tokens × d_out); null when tokens == 0
};

// Reads and checks the inputs (shapes must chain), allocates Y, picks the path.
OrtStatus* PrepareStructured(const OrtApi* api, OrtKernelContext* ctx, const Attrs& attrs,
                             StructuredCall* call);

// "StructuredFFN(b4r256u_b4r64u, activation=gelu, d_in=..., ...)" for error messages.
std::string DescribeStructured(const Attrs& attrs, const StructuredCall& c);

// RoutedFFN: X, WR, BR?, W1, B1?, W2, B2?, WA?, BA?, LS?, LB?
enum RoutedInput { kRX = 0, kRWR, kRBR, kRW1, kRB1, kRW2, kRB2, kRWA, kRBA, kRLS, kRLB,
                   kRoutedInputs };
extern const char* const kRoutedNames[kRoutedInputs];

struct RoutedCall {
  TensorView in[kRoutedInputs];
  bool present[kRoutedInputs] = {false};
  int64_t batch = 0, seq = 0, d = 0, d_ff = 0, tokens = 0;
  int64_t k = 0;           // topk: tokens per sequence for this call's sequence length
  bool topk = true;
  std::string route_mode;  // fffc.ops.route_kernel_spec's mode
  std::string ffn_mode;    // the dense FFN on the gathered rows (a StructuredFFN spec)
  std::string weight_dtype = "float32";  // of W1, W2 (WeightDtype)
  void* y = nullptr;       // output [B, S, d]; null when no tokens
};

// Reads and checks the inputs, computes k, allocates Y.
OrtStatus* PrepareRouted(const OrtApi* api, OrtKernelContext* ctx, const Attrs& attrs,
                         RoutedCall* call);

}  // namespace fffc

#endif  // FFFC_STRUCTURED_CALL_H_
