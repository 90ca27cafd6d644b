// The contract between fffc's CUDA code generator and the shim: the artifact's fatbin and,
// per kernel variant, the launches that compute one SparseFFN call. Generated per artifact
// (an x86-only artifact has zero entries and an empty fatbin).
#ifndef FFFC_CUDA_TABLE_H_
#define FFFC_CUDA_TABLE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t a, b, c;  // extent = (a * tokens + b) / c
} fffc_cuda_dim;

typedef struct {
  const char* kernel;          // __global__ function name in the fatbin
  int32_t num_params;
  const char* const* params;   // "X", "W1", ..., workspace names, "N" (int32 tokens)
  fffc_cuda_dim grid[3];
  int32_t block[3];
} fffc_cuda_launch;

typedef struct {
  const char* op;  // "SparseFFN" | "FastFeedForward"
  const char* activation;
  const char* up_activation;
  const char* mode;
  int32_t has_b1, has_b2, gated;
  int64_t d_in, d_ff, d_out;
  int64_t min_tokens, max_tokens;  // inclusive range this variant serves
  const char* variant;
  int32_t num_launches;
  const fffc_cuda_launch* launches;
  int32_t num_workspace;
  const char* const* workspace;        // scratch buffer names
  const int64_t* workspace_per_token;  // float32 elements per token of each
  const char* weight_dtype;            // "float32" | "float16" | "bfloat16" (--weight-dtype)
} fffc_cuda_entry;

extern const fffc_cuda_entry fffc_cuda_kernels[];
extern const int32_t fffc_num_cuda_kernels;
extern const unsigned char fffc_cuda_fatbin[];
extern const uint64_t fffc_cuda_fatbin_size;

#ifdef __cplusplus
}
#endif

#endif  // FFFC_CUDA_TABLE_H_
