"""Run TVM's generated CUDA kernels on the CPU: the kernel logic checked without a GPU.

The emitted ``.cu`` is compiled unchanged as C++ after a small prelude: each CUDA thread of
a block is a host thread, ``__syncthreads()`` is a barrier, ``__shared__`` memory is one
static array per kernel (blocks run one after another), the vector types TVM emits
(``float2``, ``int2``, ...) are plain structs, and ``__shfl_xor_sync`` exchanges values
through memory between two barriers (valid where the whole block reaches it together). Every block of the grid is executed, so the
result is the kernel's result, bit for bit up to the host's float rounding of the same
operations (``fmaf`` contraction may differ from the GPU's). Used by the tests and by
``fffc compile --target cuda`` to compare each kernel with the captured site outputs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence

import numpy as np

from ..codegen.cuda_build import TOKEN_VAR, CudaVariant
from ..contract.config import cache_dir, cxx
from ..contract.errors import CodegenError

_GUARD = 256  # floats after each output buffer
_SENTINEL = np.float32(-1.2345e-33)
_INT_SENTINEL = np.int32(-123456789)

_PRELUDE = r"""
#include <pthread.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
using std::max; using std::min;
struct fffc_dim3 { unsigned x, y, z; };
static thread_local fffc_dim3 threadIdx, blockIdx;
static fffc_dim3 blockDim, gridDim;
static pthread_barrier_t fffc_barrier;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __syncthreads() pthread_barrier_wait(&fffc_barrier)
#define uint unsigned int
#define uchar unsigned char
#define ushort unsigned short
#define FFFC_VEC(T, N2, N4)                                                     \
  struct N2 { T x, y; };                                                      \
  struct N4 { T x, y, z, w; };                                                \
  static inline N2 make_##N2(T x, T y) { return N2{x, y}; }                   \
  static inline N4 make_##N4(T x, T y, T z, T w) { return N4{x, y, z, w}; }
FFFC_VEC(float, float2, float4)
FFFC_VEC(int, int2, int4)
FFFC_VEC(unsigned, uint2, uint4)
// 16-bit weights (--weight-dtype): storage only, the kernels widen every load to float
struct half {
  uint16_t bits;
  explicit operator float() const {
    uint32_t sign = static_cast<uint32_t>(bits >> 15) << 31, e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
    float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24)
              : e == 31 ? (m ? NAN : INFINITY)
              : std::ldexp(static_cast<float>(m | 0x400), static_cast<int>(e) - 25);
    return sign ? -mag : mag;
  }
};
struct nv_bfloat16 {
  uint16_t bits;
  explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
};
static inline half __float2half_rn(float f) {  // round to nearest even, as the GPU does
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  float a = std::fabs(f);
  if (std::isnan(f)) return half{static_cast<uint16_t>(sign | 0x7e00)};
  if (a >= 65520.f) return half{static_cast<uint16_t>(sign | 0x7c00)};
  if (a < 6.103515625e-05f)  // subnormal: units of 2^-24 (0x400 is the smallest normal)
    return half{static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.f)))};
  int e;
  std::frexp(a, &e);
  uint32_t q = static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 11 - e))), exp = e + 14;
  if (q == 2048) q = 1024, ++exp;
  return half{static_cast<uint16_t>(sign | (exp << 10) | (q - 1024))};
}
static inline half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(half h) { return static_cast<float>(h); }
static inline nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if (std::isnan(f)) return nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40)};
  return nv_bfloat16{static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16)};
}
static inline nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(nv_bfloat16 h) { return static_cast<float>(h); }
FFFC_VEC(half, half2, half4)
FFFC_VEC(nv_bfloat16, nv_bfloat162, nv_bfloat164)
// __dp4a (sm_61+): c + the four products of the signed bytes of a and b
static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) *
         static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  return c;
}
// Warp shuffles: every thread of the block must reach the call (the kernels call them in
// block-uniform control flow); partners are exchanged through memory between two barriers.
static float fffc_xchg[1024];
static inline unsigned fffc_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
static inline float __shfl_xor_sync(unsigned, float v, int lane_mask, int width = 32) {
  unsigned tid = fffc_tid();
  fffc_xchg[tid] = v;
  pthread_barrier_wait(&fffc_barrier);
  unsigned w = static_cast<unsigned>(width);
  float r = fffc_xchg[(tid / w) * w + ((tid % w) ^ static_cast<unsigned>(lane_mask))];
  pthread_barrier_wait(&fffc_barrier);
  return r;
}
"""

_LAUNCHER = r"""
struct fffc_job { void (*body)(void**); void** args; fffc_dim3 tid; };
static void* fffc_thread(void* p) {
  fffc_job* job = static_cast<fffc_job*>(p);
  threadIdx = job->tid;
  for (unsigned z = 0; z < gridDim.z; ++z)
    for (unsigned y = 0; y < gridDim.y; ++y)
      for (unsigned x = 0; x < gridDim.x; ++x) {
        blockIdx = fffc_dim3{x, y, z};
        job->body(job->args);
        pthread_barrier_wait(&fffc_barrier);  // the next block reuses shared memory
      }
  return nullptr;
}
static int fffc_launch(void (*body)(void**), void** args, const unsigned* dims) {
  gridDim = fffc_dim3{dims[0], dims[1], dims[2]};
  blockDim = fffc_dim3{dims[3], dims[4], dims[5]};
  unsigned n = blockDim.x * blockDim.y * blockDim.z;
  pthread_barrier_init(&fffc_barrier, nullptr, n);
  std::vector<pthread_t> threads(n);
  std::vector<fffc_job> jobs(n);
  for (unsigned i = 0; i < n; ++i) {
    jobs[i] = fffc_job{body, args, fffc_dim3{i % blockDim.x, (i / blockDim.x) % blockDim.y,
                                             i / (blockDim.x * blockDim.y)}};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    if (pthread_create(&threads[i], &attr, fffc_thread, &jobs[i]) != 0) return 1;
    pthread_attr_destroy(&attr);
  }
  for (unsigned i = 0; i < n; ++i) pthread_join(threads[i], nullptr);
  pthread_barrier_destroy(&fffc_barrier);
  return 0;
}
"""


def _kernels_part(source: str) -> str:
    """The emitted source from its first kernel on (TVM's CUDA prelude is replaced)."""
    start = source.find('extern "C" __global__')
    if start < 0:
        raise CodegenError("no __global__ kernel in the CUDA source")
    # `__shared__ alignas(64) float a[..]` → `alignas(64) static float a[..]` (C++ order)
    return re.sub(r"__shared__ (alignas\(\d+\) )?", r"\1static ", source[start:])


_SIG = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)')


def _param_types(source: str) -> dict[str, tuple[str, ...]]:
    """Kernel name → each parameter's C type: ``float*``, ``int*`` or ``int`` (a scalar)."""
    out = {}
    for name, params in _SIG.findall(source):
        types = []
        for p in params.split(","):
            words = p.replace("__restrict__", "").split()[:-1]
            base = " ".join(w for w in words if w != "const")
            types.append(base.replace(" ", ""))
        out[name] = tuple(types)
    return out


def _wrapper(kernel: str, types: tuple[str, ...]) -> str:
    args = ", ".join(f"*static_cast<{t}*>(a[{i}])" if not t.endswith("*")
                     else f"static_cast<{t}>(a[{i}])" for i, t in enumerate(types))
    kinds = "".join("p" if t.endswith("*") else "i" for t in types)
    return (f"static void body_{kernel}(void** a) {{ {kernel}({args}); }}\n"
            f'extern "C" int emu_{kernel}(void** a, const unsigned* d) '
            f"{{ return fffc_launch(body_{kernel}, a, d); }}\n"
            # for tests/runtime/fake_cuda.cc: which kernelParams are pointers ("p") or ints
            f'extern "C" const char* emu_types_{kernel}() {{ return "{kinds}"; }}\n')


def _dtype(c_type: str | None, given: np.dtype) -> np.dtype:
    """The host array type of a kernel parameter: int32 index buffers stay int32, 16-bit
    weights are stored as float16 / bfloat16 (rounded to nearest here when given float32),
    int4 codes and zero points as the bytes they are packed in, everything else is float32."""
    if c_type == "uchar*":
        return np.dtype(np.uint8)
    if c_type == "half*":
        return np.dtype(np.float16)
    if c_type == "nv_bfloat16*":
        import ml_dtypes  # installed with onnx

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.int32) if given == np.int32 else np.dtype(np.float32)


def emulation_source(source: str, variants: Sequence[CudaVariant]) -> str:
    """The C++ that runs ``variants``' kernels of the CUDA ``source`` on a CPU: ``emu_<kernel>``
    (its parameters, the grid and block) and ``emu_types_<kernel>`` per kernel (any CPU's
    compiler builds it: tests cross-compile it for aarch64)."""
    kernels = sorted({ln.kernel for v in variants for ln in v.launches})
    types = _param_types(source)
    return (_PRELUDE + _kernels_part(source) + _LAUNCHER
            + "".join(_wrapper(k, types[k]) for k in kernels))


class Emulator:
    """The kernels of one CUDA source, compiled for the host; ``run`` executes a variant."""

    def __init__(self, source: str, variants: list[CudaVariant] | tuple[CudaVariant, ...]):
        self.variants = {(v.spec, v.variant): v for v in variants}
        kernels = {ln.kernel for v in variants for ln in v.launches}
        types = _param_types(source)
        self._types = {k: types[k] for k in kernels}
        text = emulation_source(source, variants)
        digest = hashlib.sha256((text + cxx()).encode()).hexdigest()[:16]
        lib = cache_dir() / "cuda-emu" / f"{digest}.so"
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            src = lib.with_suffix(".cc")
            src.write_text(text)
            tmp = lib.with_suffix(f".{os.getpid()}.so")
            proc = subprocess.run([cxx(), "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread",
                                   "-w", str(src), "-o", str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise CodegenError("emulating the CUDA kernels: " + proc.stderr[:800])
            tmp.replace(lib)
        self.library_path = lib  # the compiled kernels (also loaded by tests' fake libcuda)
        self._lib = ctypes.CDLL(str(lib))

    def run(self, variant: CudaVariant, inputs: Mapping[str, np.ndarray],
            any_tokens: bool = False, scalars: Mapping[str, int] | None = None,
            outputs: Mapping[str, int] | None = None) -> np.ndarray:
        """Y for ``inputs`` (X [tokens, d_in] and the weights by name) through every launch.

        The token range of a variant is where the shim dispatches to it; its kernels are
        correct for any count, which ``any_tokens`` lets a check exercise. Inputs keep an
        int32 dtype (index buffers), bytes stay bytes where the kernel declares ``uchar*``
        (int4 codes), everything else is float32. ``scalars`` gives int
        parameters other than N; ``outputs`` (name → elements) replaces Y by other output
        buffers, returned as a dict (flat arrays, int32 where the kernel declares ``int*``).
        """
        x = np.ascontiguousarray(inputs["X"], dtype=np.float32)
        n = x.shape[0]
        if not any_tokens and not variant.min_tokens <= n <= variant.max_tokens:
            raise ValueError(f"variant {variant.variant} serves {variant.min_tokens}.."
                             f"{variant.max_tokens} tokens, got {n}")
        declared = {p: t for ln in variant.launches
                    for p, t in zip(ln.params, self._types[ln.kernel], strict=True)}
        bufs = {k: np.ascontiguousarray(v, dtype=_dtype(declared.get(k), np.asarray(v).dtype))
                for k, v in inputs.items()}
        bufs["X"] = x
        ints = {p for p, t in declared.items() if t == "int*"}
        # outputs get a guard band: a write past the end is an error, not heap corruption;
        # NaN fill makes a read of anything unwritten show in Y
        sizes = {name: n * per_token for name, per_token in variant.workspace}
        sizes.update(outputs if outputs is not None else {"Y": n * variant.spec.d_out})
        guarded = {}
        for name, size in sizes.items():
            if name in ints:
                arr = np.full(size + _GUARD, -(2 ** 31) + 7, np.int32)
                arr[size:] = _INT_SENTINEL
            else:
                arr = np.full(size + _GUARD, np.nan, np.float32)
                arr[size:] = _SENTINEL
            guarded[name] = bufs[name] = arr
        values = {TOKEN_VAR: n, **(scalars or {})}
        ints_by_name = {name: ctypes.c_int(v) for name, v in values.items()}
        for launch in variant.launches:
            ptrs = [ctypes.cast(ctypes.pointer(ints_by_name[p]), ctypes.c_void_p) if t == "int"
                    else bufs[p].ctypes.data_as(ctypes.c_void_p)
                    for p, t in zip(launch.params, self._types[launch.kernel], strict=True)]
            argv = (ctypes.c_void_p * len(ptrs))(*ptrs)
            dims = (ctypes.c_uint * 6)(*[d(n) for d in launch.grid], *launch.block)
            if getattr(self._lib, f"emu_{launch.kernel}")(argv, dims) != 0:
                raise CodegenError(f"emulating {launch.kernel}: could not start threads")
        for name, arr in guarded.items():
            sentinel = _INT_SENTINEL if arr.dtype == np.int32 else _SENTINEL
            if not (arr[sizes[name]:] == sentinel).all():
                raise CodegenError(f"{variant.symbol}: a kernel wrote past the end of {name}")
        if outputs is not None:
            return {name: guarded[name][: sizes[name]] for name in outputs}
        return guarded["Y"][: sizes["Y"]].reshape(n, variant.spec.d_out)
