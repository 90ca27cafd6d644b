// ai.fffc::FastFeedForward on the CPU execution provider.
#ifndef FFFC_CPU_FAST_FEED_FORWARD_H_
#define FFFC_CPU_FAST_FEED_FORWARD_H_

#include "../ort_api.h"

namespace fffc::cpu {

OrtStatus* RegisterFastFeedForward(const OrtApi* api, OrtCustomOpDomain* domain);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_FAST_FEED_FORWARD_H_
