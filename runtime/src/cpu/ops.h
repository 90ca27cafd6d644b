// The ai.fffc ops on the CPU execution provider: one file per op (its kernel and its
// registration), RegisterOps adds them all.
#ifndef FFFC_CPU_OPS_H_
#define FFFC_CPU_OPS_H_

#include "../ort_api.h"

namespace fffc::cpu {

inline constexpr const char* kCpuEp = "CPUExecutionProvider";

// Adds the CPU kernels of every op to `domain`.
OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain);

// Each op's registration, defined in its own file (sparse_ffn.cc, fast_feed_forward.cc, ...).
OrtStatus* RegisterSparseFfn(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_OPS_H_
