// The contract between fffc's code generator and the shim: one entry per compiled kernel.
// fffc writes kernel_table.c (from the artifact's KernelLibrary) against this header;
// the shim only ever reaches generated code through it.
#ifndef FFFC_KERNEL_TABLE_H_
#define FFFC_KERNEL_TABLE_H_

#include <stdint.h>

#include <tvm/ffi/c_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char* op;             // "SparseFFN"
  const char* activation;     // "relu", ...
  const char* up_activation;  // "none" | "relu"
  const char* mode;           // "exact"
  int32_t has_b1, has_b2, gated;
  int64_t d_in, d_ff, d_out;
  int64_t min_tokens, max_tokens;  // inclusive range this kernel serves
  const char* symbol;              // for error messages
  TVMFFISafeCallType fn;           // __tvm_ffi_<symbol>: args in op input order, then Y
} fffc_kernel_entry;

extern const fffc_kernel_entry fffc_kernels[];
extern const int32_t fffc_num_kernels;

#ifdef __cplusplus
}
#endif

#endif  // FFFC_KERNEL_TABLE_H_
