#include "tvm_call.h"

#include <cstring>
#include <string>

#include "../op_common.h"
#include "../tvm_backend.h"

namespace fffc::cpu {

DLTensor Dl(void* data, const int64_t* shape, int ndim, bool int32) {
  return Dl(data, shape, ndim, int32 ? DLDataType{kDLInt, 32, 1} : DLDataType{kDLFloat, 32, 1});
}

DLTensor Dl(void* data, const int64_t* shape, int ndim, DLDataType dtype) {
  DLTensor t;
  std::memset(&t, 0, sizeof(t));
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = dtype;
  t.shape = const_cast<int64_t*>(shape);
  return t;
}

const fffc_kernel_entry* FindKernel(const std::string& op, const std::string& mode,
                                    const std::string& activation, bool has_b1, bool has_b2,
                                    int64_t d_in, int64_t d_ff, int64_t d_out, int64_t tokens) {
  for (int32_t i = 0; i < fffc_num_kernels; ++i) {
    const fffc_kernel_entry& e = fffc_kernels[i];
    if (op == e.op && mode == e.mode && activation == e.activation && e.has_b1 == has_b1 &&
        e.has_b2 == has_b2 && e.d_in == d_in && e.d_ff == d_ff && e.d_out == d_out &&
        e.min_tokens <= tokens && tokens <= e.max_tokens)
      return &e;
  }
  return nullptr;
}

OrtStatus* CallKernel(const OrtApi* api, OrtKernelContext* ctx, const fffc_kernel_entry& entry,
                      std::vector<DLTensor>& tensors) {
  std::vector<TVMFFIAny> args(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::memset(&args[i], 0, sizeof(TVMFFIAny));
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = &tensors[i];
  }
  TVMFFIAny ret;
  std::memset(&ret, 0, sizeof(ret));
  ret.type_index = kTVMFFINone;
  InstallTvmBackend();
  ParallelScope scope(api, ctx);
  if (entry.fn(nullptr, args.data(), static_cast<int32_t>(args.size()), &ret) != 0)
    return Fail(api, std::string(entry.symbol) + ": " + TakeLastKernelError());
  return nullptr;
}

}  // namespace fffc::cpu
