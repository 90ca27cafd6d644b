// The ai.fffc ops on the CUDA execution provider: one file per op (its kernel and its
// registration), RegisterOps adds them all.
#ifndef FFFC_CUDA_OPS_H_
#define FFFC_CUDA_OPS_H_

#include "../ort_api.h"

namespace fffc::cuda {

// Adds the CUDA kernels of every op the artifact has CUDA kernels for to `domain`.
OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain);

// Each op's registration, defined in its own file (sparse_ffn.cc, fast_feed_forward.cc, ...).
OrtStatus* RegisterSparseFfn(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain);
OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cuda

#endif  // FFFC_CUDA_OPS_H_
