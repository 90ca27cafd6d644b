#include "ops.h"

namespace fffc::cuda {

OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain) {
  if (OrtStatus* st = RegisterSparseFfn(api, domain)) return st;
  if (OrtStatus* st = RegisterFastFeedForward(api, domain)) return st;
  if (OrtStatus* st = RegisterStructuredFfn(api, domain)) return st;
  return RegisterRoutedFfn(api, domain);
}

}  // namespace fffc::cuda
