// ai.fffc::StructuredFFN on the CPU execution provider.
#ifndef FFFC_CPU_STRUCTURED_FFN_H_
#define FFFC_CPU_STRUCTURED_FFN_H_

#include "../ort_api.h"

namespace fffc::cpu {

OrtStatus* RegisterStructuredFfn(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_STRUCTURED_FFN_H_
