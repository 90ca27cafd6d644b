"""``ai.fffc::SparseFFN`` mode=cats for CPUs: CATS's gate threshold, gate first.

The function (``fffc.reference.cats_ffn``), gated FFNs only: x' = Where(|x| <= t_in, 0, x)
(TEAL's input threshold, -1 = off); g = act(x'·W1 + B1); g' = Where(|g| <= t_gate, 0, g)
(CATS); Y = (g' ⊙ up_act(x'·WU))·W2 + B2, ``TH = [t_in, t_gate]``. Per token:

0. compaction of x (indices and values of |x| > t_in) and x' as a dense row;
1. the gate GEMV, input-sparse and split over the surviving channels
   (``sparse_ffn_teal``'s form on W1 [d_in, d_ff]);
2. per block of ``nb`` neurons: act(gate); for each neuron with |g| > t_gate only, the dot
   product of x' with its row of WU (stored row per neuron [d_ff, d_in]) — the up rows of
   gated-off neurons are never read — and the block's list entry g·up_act(u);
3. the down projection over the listed neurons (``sparse_ffn_teal.DOWN``).
"""

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .._tvm import from_source
from .sparse_ffn import Tiling, check_tiling
from .sparse_ffn_teal import _QUADS, _REST, ACTIVATIONS, DOWN, PARTS, ROWS, _axpy4

_CATS = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
    KIN = T.alloc_buffer(({D},), "int32")
    XIN = T.alloc_buffer(({D},), "float32")
    XZ = T.alloc_buffer(({D},), "float32")
    ACC1 = T.alloc_buffer(({P}, {F}), "float32")
    IDX = T.alloc_buffer(({F},), "int32")
    VAL = T.alloc_buffer(({F},), "float32")
    CNT = T.alloc_buffer(({NFB},), "int32")
    LIDX = T.alloc_buffer(({F},), "int32")
    LVAL = T.alloc_buffer(({F},), "float32")
    ACC2 = T.alloc_buffer(({P}, {DO}), "float32")
    for tb in range(N):
        c = T.alloc_buffer((1,), "int32", scope="local")
        c[0] = 0
        for k in range({D}):
            XZ[k] = T.float32(0)
            if T.fabs(X[tb, k]) > TH[0]:
                XZ[k] = X[tb, k]
                KIN[c[0]] = k
                XIN[c[0]] = X[tb, k]
                c[0] = c[0] + 1
        for p in {loop}({P}):
            for fs in range({F} // {VF}):
                for v in T.vectorized({VF}):
                    ACC1[p, fs * {VF} + v] = T.float32(0)
            for q4 in range({quads}):
                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACC1[p, fs * {VF} + v] = ACC1[p, fs * {VF} + v] + {axpy4_1}
            for q in {rest}:
                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACC1[p, fs * {VF} + v] = ACC1[p, fs * {VF} + v] + XIN[q] * W1[KIN[q], fs * {VF} + v]
        for fb in {loop}({NFB}):
            n = T.alloc_buffer((1,), "int32", scope="local")
            hb = T.alloc_buffer(({NB},), "float32", scope="local")
            part = T.alloc_buffer(({VL},), "float32", scope="local")
            for fl in T.vectorized({NB}):
                hb[fl] = {b1}
            for p in range({P}):
                for fl in T.vectorized({NB}):
                    hb[fl] = hb[fl] + ACC1[p, fb * {NB} + fl]
            for fl in T.vectorized({NB}):
                hb[fl] = {act}
            n[0] = 0
            for fl in range({NB}):
                if T.fabs(hb[fl]) > TH[1]:
                    for v in T.vectorized({VL}):
                        part[v] = T.float32(0)
                    for kb in range({D} // {VL}):
                        for v in T.vectorized({VL}):
                            part[v] = part[v] + XZ[kb * {VL} + v] * WU[fb * {NB} + fl, kb * {VL} + v]
{folds}
                    IDX[fb * {NB} + n[0]] = fb * {NB} + fl
                    VAL[fb * {NB} + n[0]] = hb[fl] * {up}
                    n[0] = n[0] + 1
            CNT[fb] = n[0]
{down}'''

_FOLD = '''                    for v in T.vectorized({half}):
                        part[v] = part[v] + part[v + {half}]'''


def check_cats_spec(spec: KernelSpec) -> None:
    if spec.op != "SparseFFN" or spec.mode != "cats":
        raise CodegenError(f"not a SparseFFN mode=cats spec: {spec}")
    if not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")
    if spec.activation not in ACTIVATIONS or spec.activation == "none":
        raise CodegenError(f"SparseFFN cats: activation {spec.activation!r} has no kernel")
    if spec.up_activation not in ("none", "relu"):
        raise CodegenError(f"SparseFFN up_activation {spec.up_activation!r} is not supported")
    if spec.dtype != "float32":
        raise CodegenError(f"SparseFFN kernels are float32 only, got {spec.dtype!r}")


def _params(spec: KernelSpec) -> str:
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    shapes = {"X": "x: T.handle", "W1": f'W1: T.Buffer(({d}, {f}), "float32", align=4)',
              "B1": f'B1: T.Buffer(({f},), "float32", align=4)',
              "W2": f'W2: T.Buffer(({f}, {do}), "float32", align=4)',
              "B2": f'B2: T.Buffer(({do},), "float32", align=4)',
              "WU": f'WU: T.Buffer(({f}, {d}), "float32", align=4)',
              "TH": 'TH: T.Buffer((2,), "float32", align=4)', "Y": "y: T.handle"}
    return ", ".join(shapes[a] for a in spec.arg_names())


def cats_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS) -> str:
    """TVMScript of the CATS decode kernel (tiling as ``sparse_ffn_teal``, plus ``vl``: lanes
    of the up projection's row dot products)."""
    check_cats_spec(spec)
    check_tiling(spec, tiling)
    if tiling.mr != 1:
        raise CodegenError("the CATS kernel takes one token per tile (mr=1)")
    t = tiling
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "NB": t.nb, "NFB": spec.d_ff // t.nb,
        "VF": t.nr1, "VO": t.nr3, "VL": t.vl, "P": parts, "symbol": symbol,
        "params": _params(spec), "loop": "T.parallel" if t.parallel else "range",
        "quads": _QUADS.format(P=parts, R=ROWS), "rest": _REST.format(P=parts, R=ROWS),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_1": _axpy4("W1", f"fs * {t.nr1} + v", "XIN", "KIN", parts, ROWS),
        "axpy4_2": _axpy4("W2", f"js * {t.nr3} + v", "LVAL", "LIDX", parts, ROWS),
        "act": ACTIVATIONS[spec.activation].format(v="hb[fl]"),
        "up": "(" + ACTIVATIONS[spec.up_activation].format(v="part[0]") + ")",
    }
    folds, half = [], t.vl // 2
    while half >= 1:
        folds.append(_FOLD.format(half=half))
        half //= 2
    fmt["folds"] = "\n".join(folds)
    fmt["down"] = DOWN.format(**fmt)
    return _CATS.format(**fmt)


def cats_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS):
    source = cats_source(spec, tiling, symbol, parts)
    try:
        return from_source(source)
    except Exception as e:  # TVMScript errors carry the offending line; keep it typed
        raise CodegenError(f"TVMScript generation failed for {symbol}: {e}") from e
