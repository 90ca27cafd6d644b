// The few symbols TVM-compiled kernel objects need, provided by the shim itself:
// TVMBackendParallelLaunch runs a kernel's parallel regions on ONNX Runtime's own
// intra-op thread pool (OrtApi::KernelContext_ParallelFor), workspace memory comes from a
// per-thread cache, and the error hook keeps the message for ORT. No TVM library is
// linked or loaded.
#ifndef FFFC_TVM_BACKEND_H_
#define FFFC_TVM_BACKEND_H_

#include <string>

#include "ort_api.h"

namespace fffc {

// Points the kernels' weak hook slots at this shim's implementations (idempotent).
void InstallTvmBackend();

// While alive, kernels called on this thread run their parallel regions on the ORT
// thread pool of `ctx` (one kernel call at a time per thread, so a thread-local suffices).
class ParallelScope {
 public:
  ParallelScope(const OrtApi* api, OrtKernelContext* ctx);
  ~ParallelScope();
  ParallelScope(const ParallelScope&) = delete;
  ParallelScope& operator=(const ParallelScope&) = delete;
};

// The message of the last kernel error raised on this thread.
std::string TakeLastKernelError();

// Tasks per parallel region (FFFC_NUM_THREADS, default: hardware concurrency).
int ParallelTasks();

}  // namespace fffc

#endif  // FFFC_TVM_BACKEND_H_
