#include "sparse_ffn.h"

#include <cstring>
#include <string>

#include <dlpack/dlpack.h>
#include <fffc/kernel_table.h>

#include "../op_common.h"
#include "../tvm_backend.h"

namespace fffc::cpu {
namespace {

DLTensor Dl(void* data, const int64_t* shape, int ndim) {
  DLTensor t;
  std::memset(&t, 0, sizeof(t));
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = DLDataType{kDLFloat, 32, 1};
  t.shape = const_cast<int64_t*>(shape);
  return t;
}

struct CpuKernel : KernelBase {
  OrtStatus* Compute(OrtKernelContext* ctx) override {
    FfnCall c;
    if (OrtStatus* st = Prepare(api, ctx, &c)) return st;
    if (c.tokens == 0) return nullptr;
    const fffc_kernel_entry* entry = nullptr;
    for (int32_t i = 0; i < fffc_num_kernels && entry == nullptr; ++i) {
      const fffc_kernel_entry& e = fffc_kernels[i];
      if (Matches(attrs, c, e.activation, e.up_activation, e.mode, e.has_b1, e.has_b2, e.gated,
                  e.d_in, e.d_ff, e.d_out, e.min_tokens, e.max_tokens))
        entry = &e;
    }
    if (entry == nullptr)
      return Fail(api, "no compiled kernel for " + Describe(attrs, c) + " (CPU) in this artifact (" +
                           std::to_string(c.tokens) + " tokens)");
    const int64_t x2[2] = {c.tokens, c.d_in}, y2[2] = {c.tokens, c.d_out};
    DLTensor t[kNumInputs + 1];
    TVMFFIAny args[kNumInputs + 1];
    int n = 0;
    t[n++] = Dl(c.in[kX].data, x2, 2);
    for (int i : {kW1, kB1, kW2, kB2, kWU})
      if (c.present[i])
        t[n++] = Dl(c.in[i].data, c.in[i].dims.data(), static_cast<int>(c.in[i].dims.size()));
    t[n++] = Dl(c.y, y2, 2);
    for (int i = 0; i < n; ++i) {
      std::memset(&args[i], 0, sizeof(TVMFFIAny));
      args[i].type_index = kTVMFFIDLTensorPtr;
      args[i].v_ptr = &t[i];
    }
    TVMFFIAny ret;
    std::memset(&ret, 0, sizeof(ret));
    ret.type_index = kTVMFFINone;
    InstallTvmBackend();
    ParallelScope scope(api, ctx);
    if (entry->fn(nullptr, args, n, &ret) != 0)
      return Fail(api, std::string(entry->symbol) + ": " + TakeLastKernelError());
    return nullptr;
  }
};

}  // namespace

OrtStatus* RegisterOps(const OrtApi* api, OrtCustomOpDomain* domain) {
  static OrtCustomOp* op = NewSparseFfnOp(api, "CPUExecutionProvider", MakeKernel<CpuKernel>);
  return api->CustomOpDomain_Add(domain, op);
}

}  // namespace fffc::cpu
