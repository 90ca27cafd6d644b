// Calling one TVM-compiled CPU kernel from the kernel table with DLTensor arguments, its
// parallel regions on ONNX Runtime's intra-op pool.
#ifndef FFFC_CPU_TVM_CALL_H_
#define FFFC_CPU_TVM_CALL_H_

#include <cstdint>
#include <string>
#include <vector>

#include <dlpack/dlpack.h>
#include <fffc/kernel_table.h>

#include "../ort_api.h"

namespace fffc::cpu {

// A float32 (int32 with `int32`) CPU DLTensor over `data` (shape not copied: it must
// outlive the call).
DLTensor Dl(void* data, const int64_t* shape, int ndim, bool int32 = false);

// The same with an explicit element type (float16 weights).
DLTensor Dl(void* data, const int64_t* shape, int ndim, DLDataType dtype);

// The kernel table's entry for these spec fields that serves `tokens`, or null.
const fffc_kernel_entry* FindKernel(const std::string& op, const std::string& mode,
                                    const std::string& activation, bool has_b1, bool has_b2,
                                    int64_t d_in, int64_t d_ff, int64_t d_out, int64_t tokens);

// Runs `entry` on `args` (inputs in op order, then the output); an OrtStatus on error.
OrtStatus* CallKernel(const OrtApi* api, OrtKernelContext* ctx, const fffc_kernel_entry& entry,
                      std::vector<DLTensor>& args);

}  // namespace fffc::cpu

#endif  // FFFC_CPU_TVM_CALL_H_
