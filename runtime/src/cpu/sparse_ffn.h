// ai.fffc::SparseFFN on the CPU execution provider.
#ifndef FFFC_CPU_SPARSE_FFN_H_
#define FFFC_CPU_SPARSE_FFN_H_

#include "../ort_api.h"

namespace fffc::cpu {

// Adds the CPU kernels of every op to `domain`.
OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_SPARSE_FFN_H_
