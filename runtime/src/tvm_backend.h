// The few symbols TVM-compiled kernel objects need, provided by the shim itself:
// a persistent thread pool behind TVMBackendParallelLaunch, workspace memory, and the
// error hook. No TVM library is linked or loaded.
#ifndef FFFC_TVM_BACKEND_H_
#define FFFC_TVM_BACKEND_H_

#include <string>

namespace fffc {

// Points the kernels' weak hook slots at this shim's implementations (idempotent).
void InstallTvmBackend();

// The message of the last kernel error raised on this thread.
std::string TakeLastKernelError();

// Threads of the kernel pool (FFFC_NUM_THREADS, default: hardware concurrency).
int PoolThreads();

}  // namespace fffc

#endif  // FFFC_TVM_BACKEND_H_
