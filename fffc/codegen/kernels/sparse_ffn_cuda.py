"""``ai.fffc::SparseFFN`` mode=exact for CUDA: a few kernels launched in sequence per call.

A GPU kernel cannot allocate its scratch memory, so each variant is a short list of
launches over workspace buffers that the shim takes from ONNX Runtime (``H``, ``HU``,
``P``, sized per token). Few tokens (``decode``: TVMScript generators with explicit
thread bindings):

1. ``proj``: ``H = relu(X·W1 + B1)``: a block owns ``nt`` neurons (threadIdx.x: coalesced
   reads of ``W1 [d_in, d_ff]``) and splits d_in over ``ks`` warps rows (threadIdx.y),
   summed in shared memory; ``mr`` tokens per block share every weight read.
2. ``up`` (gated): one warp per neuron reads the row ``WU[i, :]`` (coalesced) only if the
   gate is positive for some token of the block; lane 0 sums the 32 partial dots from
   shared memory (in order); ``H ⊙= up_act(X·WU[i])``.
3. ``down``: ``P[s] = H[:, chunk s] · W2[chunk s]``: a block owns ``no`` output columns
   and one chunk of neurons (split-K over the grid: d_out alone is too few blocks), stages
   its slice of ``H`` in shared memory and reads the row ``W2[i, cols]`` only for neurons
   non-zero for some token — a warp-uniform branch, so skipped rows cost no memory traffic.
4. ``reduce``: ``Y = B2 + Σ_s P[s]`` in a fixed order (deterministic, no atomics).

Many tokens (``gemm``): sparsity of a token tile is the union over its tokens, which is
nearly dense, so the projections are plain GEMMs with fused epilogues, scheduled by
TVM's dlight ``Matmul`` rule (``relu(X·W1+B1)``, ``H ⊙ up_act(X·WUᵀ)``, ``H·W2+B2``).
"""

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec

from .._tvm import T, te, tvm
from .pieces import WEIGHT_DTYPES, activation, ceil_div, check_weight_dtype, specialize, widen
from .sparse_ffn import check_spec


@dataclass(frozen=True)
class CudaTiling:
    """Launch shape of one CUDA variant, chosen by the cuda schedule family."""

    gemm: bool = False  # many tokens: dlight GEMMs instead of the skipping kernels
    gemm_config: tuple[tuple[str, int], ...] = ()  # dlight Matmul config overrides
    mr: int = 1  # tokens per block (decode kernels)
    nt: int = 32  # neurons per proj block (threadIdx.x): one 128-byte row segment per warp
    ks: int = 8  # d_in slices per proj block (threadIdx.y), summed in shared memory
    kb: int = 1  # d_in slices over the grid (blockIdx.y): partial sums PP, summed by the
    # consumer of the projection in a fixed order
    vn: int = 1  # neurons per proj thread (lane-strided: coalesced loads, X reused vn times)
    wpb: int = 8  # warps per up block
    npw: int = 1  # neurons per up warp (the block shares one staging of X)
    x_stage_floats: int = 4096  # X columns × tokens staged per chunk by the up kernel
    no: int = 256  # output columns per down block (threadIdx.x)
    splits: int = 64  # neuron chunks of the down projection (blockIdx.y)


def workspace(spec: SparseSpec, t: CudaTiling) -> dict[str, int]:
    """Scratch buffers of a variant: name → float32 elements per token."""
    if t.gemm:
        return {"H": spec.d_ff, **({"HU": spec.d_ff} if spec.gated else {})}
    return {"PP": t.kb * spec.d_ff, **({"H": spec.d_ff} if spec.gated else {}),
            "P": t.splits * spec.d_out}


def _split_k(spec: SparseSpec, tiling: CudaTiling) -> tuple[int, int]:
    """(d_in per grid slice, d_in per warp row of a slice: a multiple of 4)."""
    kcb = ceil_div(spec.d_in, tiling.kb)
    if ceil_div(spec.d_in, kcb) != tiling.kb:
        raise CodegenError(f"kb={tiling.kb} leaves empty slices of d_in={spec.d_in}")
    return kcb, 4 * ceil_div(ceil_div(kcb, tiling.ks), 4)


def _chunk(spec: SparseSpec, tiling: CudaTiling) -> int:
    """Neurons per chunk of the down projection (``tiling.splits`` chunks, none empty)."""
    fc = ceil_div(spec.d_ff, tiling.splits)
    if ceil_div(spec.d_ff, fc) != tiling.splits:
        raise CodegenError(f"splits={tiling.splits} leaves empty chunks of d_ff={spec.d_ff}")
    return fc


def _gate(has_b1: bool, kb: int) -> Callable:
    """The first projection's pre-activation at (row, col): bias plus the split-K
    partials of ``PP``, added in order."""

    def gate(B1, PP, row, col):
        terms = [B1[col]] if has_b1 else []
        terms += [PP[row, k, col] for k in range(kb)]
        return functools.reduce(operator.add, terms)

    return gate


def proj_kernel(spec: SparseSpec, tiling: CudaTiling, symbol: str, weight_dtype: str):
    """``PP[n, bk, i] = X[n, slice bk]·W1[slice bk, i]``: the first projection's partials."""
    D, F = spec.d_in, spec.d_ff
    KB, MR, NT, KS, VN = tiling.kb, tiling.mr, tiling.nt, tiling.ks, tiling.vn
    KCB, KC = _split_k(spec, tiling)
    NBX, NBLK = ceil_div(F, NT * VN), NT * VN
    WDT = weight_dtype

    @T.prim_func
    def kernel(x: T.handle, W1: T.Buffer((D, F), WDT), pp: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        PP = T.match_buffer(pp, (N, KB, F), "float32")
        for bx in T.thread_binding(NBX, thread="blockIdx.x"):
            for bk in T.thread_binding(KB, thread="blockIdx.y"):
                for bz in T.thread_binding((N + MR - 1) // MR, thread="blockIdx.z"):
                    for ty in T.thread_binding(KS, thread="threadIdx.y"):
                        for tx in T.thread_binding(NT, thread="threadIdx.x"):
                            acc = T.alloc_buffer((VN, MR), "float32", scope="local")
                            w = T.alloc_buffer((VN,), "float32", scope="local")
                            xv = T.alloc_buffer((MR,), "float32", scope="local")
                            red = T.alloc_buffer((KS, VN, MR, NT), "float32", scope="shared")
                            for v in T.unroll(VN):
                                for t in T.unroll(MR):
                                    acc[v, t] = T.float32(0)
                            for kk in range(KC // 4):
                                for u in T.unroll(4):
                                    k = T.meta_var(bk * KCB + ty * KC + kk * 4 + u)
                                    if ty * KC + kk * 4 + u < KCB and k < D:
                                        for t in T.unroll(MR):
                                            xv[t] = X[T.min(bz * MR + t, N - 1), k]
                                        for v in T.unroll(VN):
                                            w[v] = widen(W1[k, T.min(bx * NBLK + v * NT + tx, F - 1)])
                                        for v in T.unroll(VN):
                                            for t in T.unroll(MR):
                                                acc[v, t] = acc[v, t] + xv[t] * w[v]
                            for v in T.unroll(VN):
                                for t in T.unroll(MR):
                                    red[ty, v, t, tx] = acc[v, t]
                            T.tvm_storage_sync("shared")
                            if ty == 0:
                                for v in T.unroll(VN):
                                    if bx * NBLK + v * NT + tx < F:
                                        for t in T.unroll(MR):
                                            acc[v, t] = T.float32(0)
                                            for j in T.unroll(KS):
                                                acc[v, t] = acc[v, t] + red[j, v, t, tx]
                                            if bz * MR + t < N:
                                                PP[bz * MR + t, bk, bx * NBLK + v * NT + tx] = acc[v, t]

    return kernel


def up_kernel(spec: SparseSpec, tiling: CudaTiling, symbol: str, weight_dtype: str):
    """Gated: ``H = relu(gate) ⊙ up_act(X·WUᵀ)``, a row of WU read only where the gate is
    positive for some token of the block. A block owns WPB warps × NPW neurons and stages
    X in chunks of KCH columns in shared memory once for all of them (X is read MR times
    per weight otherwise)."""
    D, F, KB, MR, WPB, NPW = spec.d_in, spec.d_ff, tiling.kb, tiling.mr, tiling.wpb, tiling.npw
    KCH = min(32 * ceil_div(D, 32), 32 * max(1, tiling.x_stage_floats // (32 * MR)))
    NBU, NCH, XSTAGE = ceil_div(F, WPB * NPW), ceil_div(D, KCH), ceil_div(MR * KCH, 32 * WPB)
    WDT = weight_dtype
    gate, up = _gate(spec.has_b1, KB), activation(spec.up_activation)

    @T.jit
    def kernel(x: T.handle, WU: T.Buffer((F, D), WDT), B1: T.Optional(T.Buffer((F,), "float32")),
               pp: T.handle, h: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        PP = T.match_buffer(pp, (N, KB, F), "float32")
        H = T.match_buffer(h, (N, F), "float32")
        for bx in T.thread_binding(NBU, thread="blockIdx.x"):
            for by in T.thread_binding((N + MR - 1) // MR, thread="blockIdx.y"):
                for ty in T.thread_binding(WPB, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        acc = T.alloc_buffer((NPW, MR), "float32", scope="local")
                        g = T.alloc_buffer((NPW, MR), "float32", scope="local")
                        w = T.alloc_buffer((1,), "float32", scope="local")
                        act = T.alloc_buffer((NPW,), "int32", scope="local")
                        xs = T.alloc_buffer((MR, KCH), "float32", scope="shared")
                        red = T.alloc_buffer((WPB, NPW, MR, 32), "float32", scope="shared")
                        for q in T.unroll(NPW):
                            act[q] = 0
                            for t in T.unroll(MR):
                                acc[q, t] = T.float32(0)
                                g[q, t] = T.float32(0)
                                if by * MR + t < N and (bx * WPB + ty) * NPW + q < F:
                                    g[q, t] = gate(B1, PP, by * MR + t, (bx * WPB + ty) * NPW + q)
                                    if g[q, t] > T.float32(0):
                                        act[q] = 1
                        for c in range(NCH):
                            for i in range(XSTAGE):
                                e = T.meta_var((i * WPB + ty) * 32 + tx)
                                if e < MR * KCH:
                                    xs[e // KCH, e % KCH] = X[T.min(by * MR + e // KCH, N - 1), T.min(c * KCH + e % KCH, D - 1)]
                            T.tvm_storage_sync("shared")
                            for q in T.unroll(NPW):
                                if act[q] != 0:
                                    for kk in range(KCH // 32):
                                        if c * KCH + kk * 32 + tx < D:
                                            w[0] = widen(WU[(bx * WPB + ty) * NPW + q, c * KCH + kk * 32 + tx])
                                            for t in T.unroll(MR):
                                                acc[q, t] = acc[q, t] + xs[t, kk * 32 + tx] * w[0]
                            T.tvm_storage_sync("shared")
                        for q in T.unroll(NPW):
                            for t in T.unroll(MR):
                                red[ty, q, t, tx] = acc[q, t]
                        T.tvm_storage_sync("shared")
                        if tx == 0:
                            for q in T.unroll(NPW):
                                if (bx * WPB + ty) * NPW + q < F:
                                    for t in T.unroll(MR):
                                        acc[q, t] = T.float32(0)
                                        for j in range(32):
                                            acc[q, t] = acc[q, t] + red[ty, q, t, j]
                                        if by * MR + t < N:
                                            H[by * MR + t, (bx * WPB + ty) * NPW + q] = T.max(g[q, t], T.float32(0)) * up(acc[q, t])

    return specialize(kernel, B1=spec.has_b1)


def down_kernel(spec: SparseSpec, tiling: CudaTiling, symbol: str, weight_dtype: str,
                from_h: bool):
    """``P[n, s] = H[n, chunk s]·W2[chunk s]``, a row of W2 read only for neurons non-zero
    for some token of the block (warp-uniform). ``from_h``: H is an input; otherwise
    ``H = relu(gate)`` straight from the first projection's partials ``PP``."""
    F, DO, KB, MR, NO, S = spec.d_ff, spec.d_out, tiling.kb, tiling.mr, tiling.no, tiling.splits
    FC = _chunk(spec, tiling)
    NBO, STAGE = ceil_div(DO, NO), ceil_div(MR * FC, NO)
    WDT = weight_dtype
    gate = _gate(spec.has_b1, KB)

    @T.jit
    def kernel(h: T.Optional(T.handle), B1: T.Optional(T.Buffer((F,), "float32")),
               pp: T.Optional(T.handle), W2: T.Buffer((F, DO), WDT), p: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        if from_h:
            H = T.match_buffer(h, (N, F), "float32")
        else:
            PP = T.match_buffer(pp, (N, KB, F), "float32")
        P = T.match_buffer(p, (N, S, DO), "float32")
        for bx in T.thread_binding(NBO, thread="blockIdx.x"):
            for bs in T.thread_binding(S, thread="blockIdx.y"):
                for bz in T.thread_binding((N + MR - 1) // MR, thread="blockIdx.z"):
                    for tx in T.thread_binding(NO, thread="threadIdx.x"):
                        acc = T.alloc_buffer((MR,), "float32", scope="local")
                        w = T.alloc_buffer((1,), "float32", scope="local")
                        nz = T.alloc_buffer((1,), "int32", scope="local")
                        hv = T.alloc_buffer((MR,), "float32", scope="local")
                        hs = T.alloc_buffer((MR, FC), "float32", scope="shared")
                        for i in range(STAGE):
                            e = T.meta_var(i * NO + tx)
                            row = T.meta_var(T.min(bz * MR + e // FC, N - 1))
                            col = T.meta_var(T.min(bs * FC + e % FC, F - 1))
                            hval = T.meta_var(H[row, col] if from_h else T.max(gate(B1, PP, row, col), T.float32(0)))
                            if e < MR * FC:
                                hs[e // FC, e % FC] = T.if_then_else(bz * MR + e // FC < N and bs * FC + e % FC < F, hval, T.float32(0))
                        T.tvm_storage_sync("shared")
                        for t in T.unroll(MR):
                            acc[t] = T.float32(0)
                        for i in range(FC):
                            nz[0] = 0
                            for t in T.unroll(MR):
                                hv[t] = hs[t, i]
                                if hv[t] != T.float32(0):
                                    nz[0] = 1
                            if nz[0] != 0:
                                w[0] = widen(W2[bs * FC + i, T.min(bx * NO + tx, DO - 1)])
                                for t in T.unroll(MR):
                                    acc[t] = acc[t] + hv[t] * w[0]
                        if bx * NO + tx < DO:
                            for t in T.unroll(MR):
                                if bz * MR + t < N:
                                    P[bz * MR + t, bs, bx * NO + tx] = acc[t]

    return specialize(kernel, h=from_h, B1=spec.has_b1 and not from_h, pp=not from_h)


def reduce_kernel(spec: SparseSpec, tiling: CudaTiling, symbol: str):
    """``Y = B2 + Σ_s P[s]`` in a fixed order (deterministic, no atomics)."""
    DO, S = spec.d_out, tiling.splits
    NBR = ceil_div(DO, 256)

    @T.jit
    def kernel(p: T.handle, B2: T.Optional(T.Buffer((DO,), "float32")), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        P = T.match_buffer(p, (N, S, DO), "float32")
        Y = T.match_buffer(y, (N, DO), "float32")
        for bx in T.thread_binding(NBR, thread="blockIdx.x"):
            for by in T.thread_binding(N, thread="blockIdx.y"):
                for tx in T.thread_binding(256, thread="threadIdx.x"):
                    s = T.alloc_buffer((1,), "float32", scope="local")
                    if bx * 256 + tx < DO:
                        s[0] = B2[bx * 256 + tx] if B2 is not None else T.float32(0)
                        for j in range(S):
                            s[0] = s[0] + P[by, j, bx * 256 + tx]
                        Y[by, bx * 256 + tx] = s[0]

    return specialize(kernel, B2=spec.has_b2)


def decode_funcs(spec: SparseSpec, tiling: CudaTiling, prefix: str, weight_dtype: str) -> dict:
    """PrimFuncs of the decode kernels, by global symbol, in launch order."""
    check_spec(spec, WEIGHT_DTYPES)
    check_weight_dtype(weight_dtype)
    out = {f"{prefix}_proj": proj_kernel(spec, tiling, f"{prefix}_proj", weight_dtype)}
    if spec.gated:
        out[f"{prefix}_up"] = up_kernel(spec, tiling, f"{prefix}_up", weight_dtype)
    out[f"{prefix}_down"] = down_kernel(spec, tiling, f"{prefix}_down", weight_dtype, spec.gated)
    out[f"{prefix}_reduce"] = reduce_kernel(spec, tiling, f"{prefix}_reduce")
    return out


def gemm_funcs(spec: SparseSpec, prefix: str, weight_dtype: str) -> dict:
    """The many-token kernels as TE compute definitions (dlight schedules them)."""
    check_spec(spec, WEIGHT_DTYPES)
    check_weight_dtype(weight_dtype)
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    n = te.var("N")
    zero = tvm.tirx.const(0, "float32")
    x = te.placeholder((n, d), name="X")
    wt = weight_dtype  # weights widened to float32 where read
    w1 = te.placeholder((d, f), name="W1", dtype=wt)
    b1 = te.placeholder((f,), name="B1")
    k = te.reduce_axis((0, d), name="k")
    mm = te.compute((n, f), lambda i, j: te.sum(x[i, k] * w1[k, j].astype("float32"), axis=k), name="mm")
    bias1 = (lambda j: b1[j]) if spec.has_b1 else (lambda j: zero)
    h = te.compute((n, f), lambda i, j: te.max(mm[i, j] + bias1(j), zero), name="H")
    funcs = {f"{prefix}_proj": [x, w1, *([b1] if spec.has_b1 else []), h]}
    hin = te.placeholder((n, f), name="H")
    if spec.gated:
        wu = te.placeholder((f, d), name="WU", dtype=wt)
        ku = te.reduce_axis((0, d), name="k")
        mu = te.compute((n, f), lambda i, j: te.sum(x[i, ku] * wu[j, ku].astype("float32"), axis=ku), name="mu")
        up = activation(spec.up_activation)
        hu = te.compute((n, f), lambda i, j: hin[i, j] * up(mu[i, j]), name="HU")
        funcs[f"{prefix}_up"] = [x, wu, hin, hu]
        hin = te.placeholder((n, f), name="HU")
    w2 = te.placeholder((f, do), name="W2", dtype=wt)
    b2 = te.placeholder((do,), name="B2")
    kd = te.reduce_axis((0, f), name="k")
    md = te.compute((n, do), lambda i, j: te.sum(hin[i, kd] * w2[kd, j].astype("float32"), axis=kd), name="md")
    bias2 = (lambda j: b2[j]) if spec.has_b2 else (lambda j: zero)
    y = te.compute((n, do), lambda i, j: md[i, j] + bias2(j), name="Y")
    funcs[f"{prefix}_down"] = [hin, w2, *([b2] if spec.has_b2 else []), y]
    return {name: te.create_prim_func(args).with_attr("global_symbol", name)
            for name, args in funcs.items()}
