"""``ai.fffc::SparseFFN`` mode=predictor for CPUs: a low-rank predictor picks the neurons.

The function (``fffc.reference.predictor_ffn``): neurons S = {i : ((x·PA)·PB + PC)_i > 0}
(Deja Vu / PowerInfer); a_i = act(W1[i]·x + B1_i) [⊙ up_act(WU[i]·x)] for i in S, 0
otherwise; Y = Σ_S a_i·W2[i] + B2. W1 and WU are stored row per neuron [d_ff, d_in], so a
selected neuron costs one contiguous row of each. Per token:

1. ``z = x·PA`` (rank r), split over d_in in ``parts`` tasks with private rows, summed;
2. per block of ``nb`` neurons (parallel): the scores ``PC + z·PB`` of the block, and for
   every neuron scoring > 0 the dot products with its rows of W1 (and WU, in the same
   pass), the activation, and the block's list entry (index, value); lists concatenated;
3. the down projection split over the listed neurons (whole rows of W2, private
   accumulators, ``sparse_ffn_teal``'s form), then Y = B2 + the parts.

The predictor costs d·r + r·d_ff multiply-adds, the FFN |S|·(2 or 3)·d: at r = d_ff/16 and
10% selected the predictor is about a fifth of the work.
"""

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .decode import (
    ACTIVATIONS,
    DOWN,
    HEADER,
    PARTS,
    QUADS,
    REST,
    ROWS,
    axpy,
    check,
    folds,
    params,
)
from .sparse_ffn import Tiling
from .text import parse

_PREDICTOR = '''
    Z = T.alloc_buffer(({P}, {R}), "float32")
    ZS = T.alloc_buffer(({R},), "float32")
    for tb in range(N):
        c = T.alloc_buffer((1,), "int32", scope="local")
        for p in {loop}({P}):
            for r in T.vectorized({R}):
                Z[p, r] = T.float32(0)
            for k in range({D} * p // {P}, {D} * (p + 1) // {P}):
                for r in T.vectorized({R}):
                    Z[p, r] = Z[p, r] + X[tb, k] * PA[k, r]
        for r in T.vectorized({R}):
            ZS[r] = T.float32(0)
        for p in range({P}):
            for r in T.vectorized({R}):
                ZS[r] = ZS[r] + Z[p, r]
        for fb in {loop}({NFB}):
            n = T.alloc_buffer((1,), "int32", scope="local")
            sb = T.alloc_buffer(({NB},), "float32", scope="local")
            part = T.alloc_buffer(({VL},), "float32", scope="local")
{up_alloc}
            h = T.alloc_buffer((1,), "float32", scope="local")
            for fl in T.vectorized({NB}):
                sb[fl] = PC[fb * {NB} + fl]
            for r in range({R}):
                for fl in T.vectorized({NB}):
                    sb[fl] = sb[fl] + ZS[r] * PB[r, fb * {NB} + fl]
            n[0] = 0
            for fl in range({NB}):
                if sb[fl] > T.float32(0):
                    for v in T.vectorized({VL}):
                        part[v] = T.float32(0)
{up_zero}
                    for kb in range({D} // {VL}):
                        for v in T.vectorized({VL}):
                            part[v] = part[v] + X[tb, kb * {VL} + v] * W1[fb * {NB} + fl, kb * {VL} + v]
{up_dot}
{folds}
                    h[0] = part[0] + {b1}
                    IDX[fb * {NB} + n[0]] = fb * {NB} + fl
                    VAL[fb * {NB} + n[0]] = {act}
                    n[0] = n[0] + 1
            CNT[fb] = n[0]
{down}
'''

_UP = {  # gated FFNs: the up projection's dot in the same pass over x
    "up_alloc": '''            pu = T.alloc_buffer(({VL},), "float32", scope="local")''',
    "up_zero": '''                    for v in T.vectorized({VL}):
                        pu[v] = T.float32(0)''',
    "up_dot": '''                            pu[v] = pu[v] + X[tb, kb * {VL} + v] * WU[fb * {NB} + fl, kb * {VL} + v]''',
}
def check_predictor_spec(spec: KernelSpec) -> None:
    if spec.rank < 1:
        raise CodegenError("SparseFFN predictor: the spec carries no rank")


def predictor_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS) -> str:
    """TVMScript of the predictor decode kernel. Of the tiling: ``mr`` must be 1, ``nb``
    neurons per scoring task, ``vl`` lanes of the row dot products, ``nr3`` the vector
    width over d_out."""
    check(spec, "predictor", tiling)
    check_predictor_spec(spec)
    t = tiling
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "R": spec.rank, "NB": t.nb,
        "NFB": spec.d_ff // t.nb, "VL": t.vl, "VO": t.nr3, "P": parts, "symbol": symbol,
        "params": params(spec), "loop": "T.parallel" if t.parallel else "range",
        "quads": QUADS.format(P=parts, R=ROWS), "rest": REST.format(P=parts, R=ROWS),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_2": axpy("W2", f"js * {t.nr3} + v", "LVAL", "LIDX", parts, ROWS),
    }
    act = ACTIVATIONS[spec.activation].format(v="h[0]")
    if spec.gated:
        act = f"({act}) * ({ACTIVATIONS[spec.up_activation].format(v='pu[0]')})"
    fmt["act"] = act
    fmt["folds"] = folds(t.vl, ("part", "pu") if spec.gated else ("part",))
    for key, text in _UP.items():
        fmt[key] = text.format(**fmt) if spec.gated else ""
    fmt["down"] = DOWN.format(**fmt)
    return (HEADER + _PREDICTOR).format(**fmt)


def predictor_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS):
    return parse(predictor_source(spec, tiling, symbol, parts), symbol)
