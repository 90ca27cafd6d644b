"""``ai.fffc::SparseFFN`` mode=exact for CUDA: a few kernels launched in sequence per call.

A GPU kernel cannot allocate its scratch memory, so each variant is a short list of
launches over workspace buffers that the shim takes from ONNX Runtime (``H``, ``HU``,
``P``, sized per token). Few tokens (``decode``, hand-written TVMScript, explicit thread
bindings):

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

from __future__ import annotations

from dataclasses import dataclass

from fffc.errors import CodegenError
from fffc.ops import WEIGHT_DTYPES, KernelSpec

from .sparse_ffn import check_spec

CUDA_WEIGHT_DTYPES = tuple(WEIGHT_DTYPES.values())  # stored 16-bit, read as float32


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


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def workspace(spec: KernelSpec, t: CudaTiling) -> dict[str, int]:
    """Scratch buffers of a variant: name → float32 elements per token."""
    if t.gemm:
        return {"H": spec.d_ff, **({"HU": spec.d_ff} if spec.gated else {})}
    return {"PP": t.kb * spec.d_ff, **({"H": spec.d_ff} if spec.gated else {}),
            "P": t.splits * spec.d_out}


def _params(spec: KernelSpec, names: list[str], kb: int = 1) -> str:
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    shapes = {"X": "x: T.handle", "W1": f'W1: T.Buffer(({d}, {f}), "float32")',
              "B1": f'B1: T.Buffer(({f},), "float32")',
              "W2": f'W2: T.Buffer(({f}, {do}), "float32")',
              "B2": f'B2: T.Buffer(({do},), "float32")',
              "WU": f'WU: T.Buffer(({f}, {d}), "float32")', "H": "h: T.handle",
              "P": "p: T.handle", "PP": "pp: T.handle", "Y": "y: T.handle"}
    return ", ".join(shapes[n] for n in names)


_HEAD = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
'''

_PROJ = '''    X = T.match_buffer(x, (N, {D}), "float32")
    PP = T.match_buffer(pp, (N, {KB}, {F}), "float32")
    for bx in T.thread_binding({NBX}, thread="blockIdx.x"):
        for bk in T.thread_binding({KB}, thread="blockIdx.y"):
            for bz in T.thread_binding((N + {MR} - 1) // {MR}, thread="blockIdx.z"):
                for ty in T.thread_binding({KS}, thread="threadIdx.y"):
                    for tx in T.thread_binding({NT}, thread="threadIdx.x"):
                        acc = T.alloc_buffer(({VN}, {MR}), "float32", scope="local")
                        w = T.alloc_buffer(({VN},), "float32", scope="local")
                        xv = T.alloc_buffer(({MR},), "float32", scope="local")
                        red = T.alloc_buffer(({KS}, {VN}, {MR}, {NT}), "float32", scope="shared")
                        for v in T.unroll({VN}):
                            for t in T.unroll({MR}):
                                acc[v, t] = T.float32(0)
                        for kk in range({KC} // 4):
                            for u in T.unroll(4):
                                if ty * {KC} + kk * 4 + u < {KCB} and bk * {KCB} + ty * {KC} + kk * 4 + u < {D}:
                                    for t in T.unroll({MR}):
                                        xv[t] = X[T.min(bz * {MR} + t, N - 1), bk * {KCB} + ty * {KC} + kk * 4 + u]
                                    for v in T.unroll({VN}):
                                        w[v] = W1[bk * {KCB} + ty * {KC} + kk * 4 + u, T.min(bx * {NBLK} + v * {NT} + tx, {F} - 1)]
                                    for v in T.unroll({VN}):
                                        for t in T.unroll({MR}):
                                            acc[v, t] = acc[v, t] + xv[t] * w[v]
                        for v in T.unroll({VN}):
                            for t in T.unroll({MR}):
                                red[ty, v, t, tx] = acc[v, t]
                        T.tvm_storage_sync("shared")
                        if ty == 0:
                            for v in T.unroll({VN}):
                                if bx * {NBLK} + v * {NT} + tx < {F}:
                                    for t in T.unroll({MR}):
                                        acc[v, t] = T.float32(0)
                                        for j in T.unroll({KS}):
                                            acc[v, t] = acc[v, t] + red[j, v, t, tx]
                                        if bz * {MR} + t < N:
                                            PP[bz * {MR} + t, bk, bx * {NBLK} + v * {NT} + tx] = acc[v, t]
'''

# Gated: a block owns WPB warps × NPW neurons; the block stages X in chunks of KCH
# columns in shared memory once for all of them (X is read MR times per weight otherwise).
_UP = '''    X = T.match_buffer(x, (N, {D}), "float32")
    PP = T.match_buffer(pp, (N, {KB}, {F}), "float32")
    H = T.match_buffer(h, (N, {F}), "float32")
    for bx in T.thread_binding({NBU}, thread="blockIdx.x"):
        for by in T.thread_binding((N + {MR} - 1) // {MR}, thread="blockIdx.y"):
            for ty in T.thread_binding({WPB}, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer(({NPW}, {MR}), "float32", scope="local")
                    g = T.alloc_buffer(({NPW}, {MR}), "float32", scope="local")
                    w = T.alloc_buffer((1,), "float32", scope="local")
                    act = T.alloc_buffer(({NPW},), "int32", scope="local")
                    xs = T.alloc_buffer(({MR}, {KCH}), "float32", scope="shared")
                    red = T.alloc_buffer(({WPB}, {NPW}, {MR}, 32), "float32", scope="shared")
                    for q in T.unroll({NPW}):
                        act[q] = 0
                        for t in T.unroll({MR}):
                            acc[q, t] = T.float32(0)
                            g[q, t] = T.float32(0)
                            if by * {MR} + t < N and (bx * {WPB} + ty) * {NPW} + q < {F}:
                                g[q, t] = {gate_up}
                                if g[q, t] > T.float32(0):
                                    act[q] = 1
                    for c in range({NCH}):
                        for i in range({XSTAGE}):
                            if (i * {WPB} + ty) * 32 + tx < {MR} * {KCH}:
                                xs[((i * {WPB} + ty) * 32 + tx) // {KCH}, ((i * {WPB} + ty) * 32 + tx) % {KCH}] = X[T.min(by * {MR} + ((i * {WPB} + ty) * 32 + tx) // {KCH}, N - 1), T.min(c * {KCH} + ((i * {WPB} + ty) * 32 + tx) % {KCH}, {D} - 1)]
                        T.tvm_storage_sync("shared")
                        for q in T.unroll({NPW}):
                            if act[q] != 0:
                                for kk in range({KCH} // 32):
                                    if c * {KCH} + kk * 32 + tx < {D}:
                                        w[0] = WU[(bx * {WPB} + ty) * {NPW} + q, c * {KCH} + kk * 32 + tx]
                                        for t in T.unroll({MR}):
                                            acc[q, t] = acc[q, t] + xs[t, kk * 32 + tx] * w[0]
                        T.tvm_storage_sync("shared")
                    for q in T.unroll({NPW}):
                        for t in T.unroll({MR}):
                            red[ty, q, t, tx] = acc[q, t]
                    T.tvm_storage_sync("shared")
                    if tx == 0:
                        for q in T.unroll({NPW}):
                            if (bx * {WPB} + ty) * {NPW} + q < {F}:
                                for t in T.unroll({MR}):
                                    acc[q, t] = T.float32(0)
                                    for j in range(32):
                                        acc[q, t] = acc[q, t] + red[ty, q, t, j]
                                    if by * {MR} + t < N:
                                        H[by * {MR} + t, (bx * {WPB} + ty) * {NPW} + q] = T.max(g[q, t], T.float32(0)) * {up}
'''

_DOWN = '''{hbuf}
    P = T.match_buffer(p, (N, {S}, {DO}), "float32")
    for bx in T.thread_binding({NBO}, thread="blockIdx.x"):
        for bs in T.thread_binding({S}, thread="blockIdx.y"):
            for bz in T.thread_binding((N + {MR} - 1) // {MR}, thread="blockIdx.z"):
                for tx in T.thread_binding({NO}, thread="threadIdx.x"):
                    acc = T.alloc_buffer(({MR},), "float32", scope="local")
                    w = T.alloc_buffer((1,), "float32", scope="local")
                    nz = T.alloc_buffer((1,), "int32", scope="local")
                    hv = T.alloc_buffer(({MR},), "float32", scope="local")
                    hs = T.alloc_buffer(({MR}, {FC}), "float32", scope="shared")
                    for i in range({STAGE}):
                        if i * {NO} + tx < {MR} * {FC}:
                            hs[(i * {NO} + tx) // {FC}, (i * {NO} + tx) % {FC}] = T.if_then_else(bz * {MR} + (i * {NO} + tx) // {FC} < N and bs * {FC} + (i * {NO} + tx) % {FC} < {F}, {stage}, T.float32(0))
                    T.tvm_storage_sync("shared")
                    for t in T.unroll({MR}):
                        acc[t] = T.float32(0)
                    for i in range({FC}):
                        nz[0] = 0
                        for t in T.unroll({MR}):
                            hv[t] = hs[t, i]
                            if hv[t] != T.float32(0):
                                nz[0] = 1
                        if nz[0] != 0:
                            w[0] = W2[bs * {FC} + i, T.min(bx * {NO} + tx, {DO} - 1)]
                            for t in T.unroll({MR}):
                                acc[t] = acc[t] + hv[t] * w[0]
                    if bx * {NO} + tx < {DO}:
                        for t in T.unroll({MR}):
                            if bz * {MR} + t < N:
                                P[bz * {MR} + t, bs, bx * {NO} + tx] = acc[t]
'''

_REDUCE = '''    P = T.match_buffer(p, (N, {S}, {DO}), "float32")
    Y = T.match_buffer(y, (N, {DO}), "float32")
    for bx in T.thread_binding({NBR}, thread="blockIdx.x"):
        for by in T.thread_binding(N, thread="blockIdx.y"):
            for tx in T.thread_binding(256, thread="threadIdx.x"):
                s = T.alloc_buffer((1,), "float32", scope="local")
                if bx * 256 + tx < {DO}:
                    s[0] = {b2}
                    for j in range({S}):
                        s[0] = s[0] + P[by, j, bx * 256 + tx]
                    Y[by, bx * 256 + tx] = s[0]
'''


def _gate(spec: KernelSpec, kb: int, row: str, col: str) -> str:
    """The first projection's pre-activation: bias plus the split-K partials, in order."""
    terms = [f"B1[{col}]"] if spec.has_b1 else []
    terms += [f"PP[{row}, {k}, {col}]" for k in range(kb)]
    return " + ".join(terms)


def decode_sources(spec: KernelSpec, t: CudaTiling, prefix: str) -> dict[str, str]:
    """TVMScript of the decode kernels, by global symbol, in launch order."""
    check_spec(spec, CUDA_WEIGHT_DTYPES)
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    fc = ceil_div(f, t.splits)
    if ceil_div(f, fc) != t.splits:
        raise CodegenError(f"splits={t.splits} leaves empty chunks of d_ff={f}")
    kcb = ceil_div(d, t.kb)
    if ceil_div(d, kcb) != t.kb:
        raise CodegenError(f"kb={t.kb} leaves empty slices of d_in={d}")
    kch = min(32 * ceil_div(d, 32), 32 * max(1, t.x_stage_floats // (32 * t.mr)))
    row = f"T.min(bz * {t.mr} + (i * {t.no} + tx) // {fc}, N - 1)"
    col = f"T.min(bs * {fc} + (i * {t.no} + tx) % {fc}, {f} - 1)"
    fmt: dict[str, object] = {
        "D": d, "F": f, "DO": do, "MR": t.mr, "NT": t.nt, "KS": t.ks, "KB": t.kb, "KCB": kcb,
        "KC": 4 * ceil_div(ceil_div(kcb, t.ks), 4),
        "NBX": ceil_div(f, t.nt * t.vn), "WPB": t.wpb, "NBU": ceil_div(f, t.wpb * t.npw),
        "NO": t.no, "NBO": ceil_div(do, t.no), "NBR": ceil_div(do, 256), "S": t.splits, "FC": fc,
        "STAGE": ceil_div(t.mr * fc, t.no),
        "b2": "B2[bx * 256 + tx]" if spec.has_b2 else "T.float32(0)",
        "up": "T.max(acc[q, t], T.float32(0))" if spec.up_activation == "relu" else "acc[q, t]",
        "gate_up": _gate(spec, t.kb, f"by * {t.mr} + t", f"(bx * {t.wpb} + ty) * {t.npw} + q"),
        "VN": t.vn, "NBLK": t.nt * t.vn, "NPW": t.npw, "KCH": kch, "NCH": ceil_div(d, kch),
        "XSTAGE": ceil_div(t.mr * kch, 32 * t.wpb),
    }
    if spec.gated:  # the up kernel wrote H
        fmt["hbuf"] = f'    H = T.match_buffer(h, (N, {f}), "float32")'
        fmt["stage"] = f"H[{row}, {col}]"
    else:  # H = relu(gate) straight from the partials: no kernel in between
        fmt["hbuf"] = f'    PP = T.match_buffer(pp, (N, {t.kb}, {f}), "float32")'
        fmt["stage"] = f"T.max({_gate(spec, t.kb, row, col)}, T.float32(0))"
    b1 = ["B1"] if spec.has_b1 else []
    args = {
        "proj": ["X", "W1", "PP"],
        "up": ["X", "WU", *b1, "PP", "H"],
        "down": (["H"] if spec.gated else [*b1, "PP"]) + ["W2", "P"],
        "reduce": ["P", *(["B2"] if spec.has_b2 else []), "Y"],
    }
    bodies = {"proj": _PROJ, "up": _UP, "down": _DOWN, "reduce": _REDUCE}
    out = {}
    for name in ("proj", "up", "down", "reduce"):
        if name == "up" and not spec.gated:
            continue
        symbol = f"{prefix}_{name}"
        head = _HEAD.format(params=_params(spec, args[name], t.kb), symbol=symbol)
        out[symbol] = head + bodies[name].format(**fmt)
    return out


def gemm_funcs(spec: KernelSpec, prefix: str) -> dict:
    """The many-token kernels as TE compute definitions (dlight schedules them)."""
    check_spec(spec, CUDA_WEIGHT_DTYPES)
    from .._tvm import te, tvm

    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    n = te.var("N")
    zero = tvm.tirx.const(0, "float32")
    x = te.placeholder((n, d), name="X")
    wt = spec.dtype  # weights widened to float32 where read (--weight-dtype)
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
        up = (lambda v: te.max(v, zero)) if spec.up_activation == "relu" else (lambda v: v)
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
