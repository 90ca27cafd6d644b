// StructuredFFN and RoutedFFN calls (inputs: contract::StructuredFFN, contract::RoutedFFN):
// inputs read and checked once, shared by the CPU and the
// CUDA kernels (the kernel-table modes they look up are fffc.ops' strings).
#ifndef FFFC_STRUCTURED_CALL_H_
#define FFFC_STRUCTURED_CALL_H_

#include <cstdint>
#include <string>

#include "op_common.h"

namespace fffc {

struct StructuredCall {
  TensorView in[Structured::kNumInputs];
  bool present[Structured::kNumInputs] = {false};
  int64_t d_in = 0, d_ff = 0, d_out = 0, tokens = 0;
  bool merged = false;  // the pre-merged dense path (M1/M2) serves this call
  std::string mode;     // fffc.ops.structured_kernel_spec's mode of the path taken
  WeightDtype weight_dtype = WeightDtype::kFloat32;  // of A1, U1, A2, U2, S1, S2
  void* y = nullptr;    // output (tokens × d_out); null when tokens == 0
};

// Reads and checks the inputs (shapes must chain), allocates Y, picks the path.
OrtStatus* PrepareStructured(const OrtApi* api, OrtKernelContext* ctx, const StructuredAttrs& attrs,
                             StructuredCall* call);

// "StructuredFFN(b4r256u_b4r64u, activation=gelu, d_in=..., ...)" for error messages.
std::string DescribeStructured(const StructuredAttrs& attrs, const StructuredCall& c);

struct RoutedCall {
  TensorView in[Routed::kNumInputs];
  bool present[Routed::kNumInputs] = {false};
  int64_t batch = 0, seq = 0, d = 0, d_ff = 0, tokens = 0;
  int64_t k = 0;           // topk: tokens per sequence for this call's sequence length
  bool topk = true;
  std::string route_mode;  // fffc.ops.route_kernel_spec's mode
  std::string ffn_mode;    // the dense FFN on the gathered rows (a StructuredFFN spec)
  WeightDtype weight_dtype = WeightDtype::kFloat32;  // of W1, W2
  void* y = nullptr;       // output [B, S, d]; null when no tokens
};

// Reads and checks the inputs, computes k, allocates Y.
OrtStatus* PrepareRouted(const OrtApi* api, OrtKernelContext* ctx, const RoutedAttrs& attrs,
                         RoutedCall* call);

}  // namespace fffc

#endif  // FFFC_STRUCTURED_CALL_H_
