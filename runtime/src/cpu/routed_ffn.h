// ai.fffc::RoutedFFN (Mixture-of-Depths) on the CPU execution provider.
#ifndef FFFC_CPU_ROUTED_FFN_H_
#define FFFC_CPU_ROUTED_FFN_H_

#include "../ort_api.h"

namespace fffc::cpu {

OrtStatus* RegisterRoutedFfn(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_ROUTED_FFN_H_
