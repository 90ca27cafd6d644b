"""``ai.fffc::SparseFFN`` mode=cats for CPUs: CATS's gate threshold, gate first.

The function (``fffc.reference.cats_ffn``), gated FFNs only: x' = Where(|x| <= t_in, 0, x)
(TEAL's input threshold, -1 = off); g = act(x'·W1 + B1); g' = Where(|g| <= t_gate, 0, g)
(CATS); Y = (g' ⊙ up_act(x'·WU))·W2 + B2, ``TH = [t_in, t_gate]``. Per token:

0. compaction of x (indices and values of |x| > t_in) and x' as a dense row;
1. the gate GEMV, input-sparse and split over the surviving channels
   (``sparse_ffn_teal``'s form on W1 [d_in, d_ff]);
2. per block of ``nb`` neurons: act(gate); for each neuron with |g| > t_gate only, the dot
   product of x' with its row of WU (stored row per neuron [d_ff, d_in]) — the up rows of
   gated-off neurons are never read — and, where it is non-zero (a ReLU up projection
   can zero it too: dReLU), the block's list entry g·up_act(u);
3. the down projection over the listed neurons (``decode.DOWN``).
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
    gemv1,
    params,
)
from .sparse_ffn import Tiling
from .text import parse

_CATS = '''
    KIN = T.alloc_buffer(({D},), "int32")
    XIN = T.alloc_buffer(({D},), "float32")
    XZ = T.alloc_buffer(({D},), "float32")
    ACC1 = T.alloc_buffer(({P}, {F}), "float32")
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
{gemv1}
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
                    part[0] = hb[fl] * {up}
                    if part[0] != T.float32(0):
                        IDX[fb * {NB} + n[0]] = fb * {NB} + fl
                        VAL[fb * {NB} + n[0]] = part[0]
                        n[0] = n[0] + 1
            CNT[fb] = n[0]
{down}
'''

def check_cats_spec(spec: KernelSpec) -> None:
    if not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")


def cats_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS) -> str:
    """TVMScript of the CATS decode kernel (tiling as ``sparse_ffn_teal``, plus ``vl``: lanes
    of the up projection's row dot products)."""
    check(spec, "cats", tiling)
    check_cats_spec(spec)
    t = tiling
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "NB": t.nb, "NFB": spec.d_ff // t.nb,
        "VF": t.nr1, "VO": t.nr3, "VL": t.vl, "P": parts, "symbol": symbol,
        "params": params(spec), "loop": "T.parallel" if t.parallel else "range",
        "quads": QUADS.format(P=parts, R=ROWS), "rest": REST.format(P=parts, R=ROWS),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_1": axpy("W1", f"fs * {t.nr1} + v", "XIN", "KIN", parts, ROWS),
        "axpy4_2": axpy("W2", f"js * {t.nr3} + v", "LVAL", "LIDX", parts, ROWS),
        "act": ACTIVATIONS[spec.activation].format(v="hb[fl]"),
        "up": "(" + ACTIVATIONS[spec.up_activation].format(v="part[0]") + ")",
    }
    fmt["folds"] = folds(t.vl)
    fmt["axpy1_1"] = f"XIN[q] * W1[KIN[q], fs * {t.nr1} + v]"
    fmt["gemv1"] = gemv1(fmt)
    fmt["down"] = DOWN.format(**fmt)
    return (HEADER + _CATS).format(**fmt)


def cats_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS):
    return parse(cats_source(spec, tiling, symbol, parts), symbol)
