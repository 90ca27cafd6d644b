// ONNX Runtime's C API, asked for at the oldest version the shim needs so that the
// library loads in older runtimes too (OrtCustomOp::version is set to the same value).
#ifndef FFFC_ORT_API_H_
#define FFFC_ORT_API_H_

#include <onnxruntime_c_api.h>

namespace fffc {

// 17: OrtCustomOp::CreateKernelV2/KernelComputeV2 (errors as OrtStatus, 16) and
// KernelContext_ParallelFor (kernels run on ORT's intra-op pool, 17): ORT >= 1.17.
constexpr uint32_t kOrtApiVersion = 17;

}  // namespace fffc

#endif  // FFFC_ORT_API_H_
