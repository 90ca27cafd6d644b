// The CUDA driver API, loaded with dlopen on first use: the shim links no CUDA library,
// so it loads (and its CPU kernels run) on machines without a GPU or driver.
#ifndef FFFC_CUDA_DRIVER_H_
#define FFFC_CUDA_DRIVER_H_

#include <cstddef>
#include <string>

namespace fffc::cuda {

using CUresult = int;
using CUcontext = void*;
using CUmodule = void*;
using CUfunction = void*;
using CUstream = void*;
using CUdeviceptr = unsigned long long;

struct Driver {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuCtxGetCurrent)(CUcontext*);
  CUresult (*cuModuleLoadData)(CUmodule*, const void*);
  CUresult (*cuModuleGetFunction)(CUfunction*, CUmodule, const char*);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void**, void**);
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void*, size_t);
  CUresult (*cuGetErrorString)(CUresult, const char**);
};

// The loaded driver, or nullptr with `why` set (no libcuda.so.1, missing symbols, cuInit).
const Driver* GetDriver(std::string* why);

// "cuLaunchKernel: CUDA_ERROR_... (code)" for a failed call.
std::string Error(const Driver* d, const char* call, CUresult r);

}  // namespace fffc::cuda

#endif  // FFFC_CUDA_DRIVER_H_
