"""``ai.fffc::SparseFFN`` mode=exact as hand-written TVMScript (tirx), target-neutral.

Three phases, each one parallel region:

1. **projection** (parallel over blocks of neurons): ``h = X·W1 + B1`` for all tokens with a
   register-tiled micro-kernel (MR tokens × NR neurons, vectorized over the contiguous
   neuron dimension of ``W1 [d_in, d_ff]``), then the activation. Gated FFNs compute the
   up projection here too, but only for neurons whose ReLU gate is positive: a dot product
   with the contiguous row ``WU[i, :]``.
2. **compaction** (parallel over tokens): the non-zero activations of each token become a
   list of (neuron, value) pairs.
3. **down projection** (parallel over column chunks of ``Y``, chunk-major so that a
   chunk of ``W2`` stays in cache across tokens): ``Y[t] = B2 + Σ value · W2[neuron]`` over
   each token's list, accumulated in registers.

Skipped neurons cost nothing in phase 3 (and, gated, nothing in the up projection): the
output equals the dense computation up to float reassociation. The schedule numbers
(MR, NR, NB, DC) come from the target family's ``Config``; the token count is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .._tvm import from_source


@dataclass(frozen=True)
class Tiling:
    """Loop tiling of one kernel: chosen per target family by its schedule."""

    mr: int  # tokens per micro-tile in phase 1
    nr: int  # neurons per micro-tile in phase 1 (vector width multiple)
    nb: int  # neurons per parallel task in phase 1 (multiple of nr, divides d_ff)
    dc: int  # output columns per task in phase 3 (divides d_out)
    vl: int  # vector lanes for dot products (divides d_in)
    tasks: int = 64  # parallel work items of phases 2 and 3 (each allocates its scratch once)


def check_spec(spec: KernelSpec) -> None:
    """Raise CodegenError for specs this kernel family cannot compute exactly."""
    if spec.mode != "exact":
        raise CodegenError(f"SparseFFN mode {spec.mode!r}: only 'exact' has kernels")
    if spec.activation != "relu":
        raise CodegenError(f"SparseFFN exact needs activation 'relu' (true zeros), got "
                           f"{spec.activation!r}")
    if spec.up_activation not in ("none", "relu"):
        raise CodegenError(f"SparseFFN up_activation {spec.up_activation!r} is not supported")
    if spec.dtype != "float32":
        raise CodegenError(f"SparseFFN kernels are float32 only, got {spec.dtype}")


_TEMPLATE = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
    H = T.alloc_buffer((N, {F}), "float32")
    IDX = T.alloc_buffer((N, {F}), "int32")
    VAL = T.alloc_buffer((N, {F}), "float32")
    CNT = T.alloc_buffer((N,), "int32")
    # phase 1: projection + activation (+ gated up projection), parallel over neuron blocks
    for fb in T.parallel({NFB}):
        acc = T.alloc_buffer(({MR}, {NR}), "float32", scope="local")
        for tb in range(N // {MR}):
            for fs in range({NB} // {NR}):
                for ti in T.unroll({MR}):
                    for fi in T.vectorized({NR}):
                        acc[ti, fi] = {init1}
                for k in range({D}):
                    for ti in T.unroll({MR}):
                        for fi in T.vectorized({NR}):
                            acc[ti, fi] = acc[ti, fi] + X[tb * {MR} + ti, k] * W1[k, fb * {NB} + fs * {NR} + fi]
                for ti in T.unroll({MR}):
                    for fi in T.vectorized({NR}):
                        H[tb * {MR} + ti, fb * {NB} + fs * {NR} + fi] = T.max(acc[ti, fi], T.float32(0))
        for t in range(N // {MR} * {MR}, N):
            for fs in range({NB} // {NR}):
                for fi in T.vectorized({NR}):
                    acc[0, fi] = {init1}
                for k in range({D}):
                    for fi in T.vectorized({NR}):
                        acc[0, fi] = acc[0, fi] + X[t, k] * W1[k, fb * {NB} + fs * {NR} + fi]
                for fi in T.vectorized({NR}):
                    H[t, fb * {NB} + fs * {NR} + fi] = T.max(acc[0, fi], T.float32(0))
{gated_block}
    # phase 2: compaction of the non-zero activations, parallel over chunks of tokens
    for w in T.parallel(T.min(N, {TASKS})):
        c = T.alloc_buffer((1,), "int32", scope="local")
        for t in range(w * ((N + {TASKS} - 1) // {TASKS}), T.min(N, (w + 1) * ((N + {TASKS} - 1) // {TASKS}))):
            c[0] = 0
            for i in range({F}):
                if H[t, i] != T.float32(0):
                    IDX[t, c[0]] = i
                    VAL[t, c[0]] = H[t, i]
                    c[0] = c[0] + 1
            CNT[t] = c[0]
    # phase 3: down projection over each token's list; work items are (column chunk, token),
    # chunk-major so a thread keeps its chunk of W2 in cache across tokens
    for w in T.parallel(T.min(N * {NDC}, {TASKS})):
        o0 = T.alloc_buffer(({DC},), "float32", scope="local")
        o1 = T.alloc_buffer(({DC},), "float32", scope="local")
        o2 = T.alloc_buffer(({DC},), "float32", scope="local")
        o3 = T.alloc_buffer(({DC},), "float32", scope="local")
        n = T.alloc_buffer((1,), "int32", scope="local")
        for p in range(w * ((N * {NDC} + {TASKS} - 1) // {TASKS}), T.min(N * {NDC}, (w + 1) * ((N * {NDC} + {TASKS} - 1) // {TASKS}))):
            for j in T.vectorized({DC}):
                o0[j] = {init2}
                o1[j] = T.float32(0)
                o2[j] = T.float32(0)
                o3[j] = T.float32(0)
            # four independent accumulator chains hide the FMA latency
            n[0] = CNT[p % N]
            for q4 in range(n[0] // 4):
                for j in T.vectorized({DC}):
                    o0[j] = o0[j] + VAL[p % N, q4 * 4] * W2[IDX[p % N, q4 * 4], p // N * {DC} + j]
                    o1[j] = o1[j] + VAL[p % N, q4 * 4 + 1] * W2[IDX[p % N, q4 * 4 + 1], p // N * {DC} + j]
                    o2[j] = o2[j] + VAL[p % N, q4 * 4 + 2] * W2[IDX[p % N, q4 * 4 + 2], p // N * {DC} + j]
                    o3[j] = o3[j] + VAL[p % N, q4 * 4 + 3] * W2[IDX[p % N, q4 * 4 + 3], p // N * {DC} + j]
            for q in range(n[0] // 4 * 4, n[0]):
                for j in T.vectorized({DC}):
                    o0[j] = o0[j] + VAL[p % N, q] * W2[IDX[p % N, q], p // N * {DC} + j]
            for j in T.vectorized({DC}):
                Y[p % N, p // N * {DC} + j] = (o0[j] + o1[j]) + (o2[j] + o3[j])
'''

# Gated: inside phase 1's parallel block, after the gate: up projection for active neurons.
_GATED = '''
        part = T.alloc_buffer(({VL},), "float32", scope="local")
        u = T.alloc_buffer((1,), "float32", scope="local")
        for t in range(N):
            for fl in range({NB}):
                if H[t, fb * {NB} + fl] > T.float32(0):
                    for v in T.vectorized({VL}):
                        part[v] = T.float32(0)
                    for kb in range({D} // {VL}):
                        for v in T.vectorized({VL}):
                            part[v] = part[v] + X[t, kb * {VL} + v] * WU[fb * {NB} + fl, kb * {VL} + v]
                    u[0] = T.float32(0)
                    for v in range({VL}):
                        u[0] = u[0] + part[v]
                    H[t, fb * {NB} + fl] = H[t, fb * {NB} + fl] * {up}
'''


def sparse_ffn_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str):
    """The PrimFunc of one SparseFFN kernel; arguments in ``spec.arg_names()`` order."""
    check_spec(spec)
    t = tiling
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    for name, whole, part in (("nb", f, t.nb), ("dc", do, t.dc), ("vl", d, t.vl)):
        if whole % part:
            raise CodegenError(f"tiling {name}={part} does not divide {whole}")
    if t.nb % t.nr:
        raise CodegenError(f"tiling nr={t.nr} does not divide nb={t.nb}")
    shapes = {"X": "x: T.handle", "W1": f"W1: T.Buffer(({d}, {f}), \"float32\")",
              "B1": f"B1: T.Buffer(({f},), \"float32\")",
              "W2": f"W2: T.Buffer(({f}, {do}), \"float32\")",
              "B2": f"B2: T.Buffer(({do},), \"float32\")",
              "WU": f"WU: T.Buffer(({f}, {d}), \"float32\")", "Y": "y: T.handle"}
    params = ", ".join(shapes[a] for a in spec.arg_names())
    b1 = "B1[fb * {NB} + fs * {NR} + fi]" if spec.has_b1 else "T.float32(0)"
    up = "T.max(u[0], T.float32(0))" if spec.up_activation == "relu" else "u[0]"
    fmt = {"D": d, "F": f, "DO": do, "MR": t.mr, "NR": t.nr, "NB": t.nb, "NFB": f // t.nb,
           "DC": t.dc, "NDC": do // t.dc, "VL": t.vl, "TASKS": t.tasks, "symbol": symbol,
           "up": up}
    fmt["init1"] = b1.format(**fmt)
    fmt["init2"] = "B2[p // N * {DC} + j]".format(**fmt) if spec.has_b2 else "T.float32(0)"
    fmt["params"] = params
    fmt["gated_block"] = _GATED.format(**fmt) if spec.gated else ""
    source = _TEMPLATE.format(**fmt)
    try:
        return from_source(source)
    except Exception as e:  # TVMScript parse errors carry the offending line
        raise CodegenError(f"TVMScript generation failed for {symbol}: {e}") from e
