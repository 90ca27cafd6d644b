"""``ai.fffc::SparseFFN`` mode=teal for CPUs: TEAL's thresholded FFN, computed sparsely.

The function (``passes/standard_forms.ffn`` with thresholds, ``fffc.reference.teal_ffn``):
x' = Where(|x| <= t_in, 0, x); a = act(x'·W1 + B1) [⊙ up_act(x'·WU)];
a' = Where(|a| <= t_hidden, 0, a); Y = a'·W2 + B2, with ``TH = [t_in, t_hidden]`` an input
(a negative t switches that threshold off). Centered (``spec.centers``): x - XC and a - HC
are thresholded instead (their share is in B1, B2). Per token:

0. **compaction of x** (serial, d_in compares): surviving channels' indices and values;
1. **input-sparse GEMV, split over the surviving channels** (``parts`` tasks): each task
   accumulates ``Σ x_k · W1[k, :]`` over its share of channels into a private full-width
   row, four weight rows per pass. W1 (and WU, gated) is input-channel-major [d_in, d_ff],
   so every surviving channel is one long contiguous row (what hardware prefetchers
   stream at full bandwidth) and skipped channels are never read;
2. **activation** (parallel over blocks of ``nb`` neurons): sum of the parts + B1, the
   activation (times the up projection's), and the block's list of neurons with
   |a| > t_hidden; the lists are then concatenated (serial, one copy per survivor);
3. **down projection, split over the listed neurons**: the same axpy form on whole rows
   of W2 [d_ff, d_out], then Y = B2 + the sum of the parts.

Exact with respect to the thresholded function up to float reassociation (and a neuron
whose |a| lies within rounding of t_hidden). It is the decode kernel: each token runs the
phases in turn; past ``sparse_max_tokens`` artifacts run the thresholded FFN in ONNX
Runtime instead (an ``If`` on the token count), where per-token skipping no longer pays.
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
    gemv1,
    params,
)
from .sparse_ffn import Tiling
from .text import parse

_TEAL = '''
    KIN = T.alloc_buffer(({D},), "int32")
    XIN = T.alloc_buffer(({D},), "float32")
    ACC1 = T.alloc_buffer(({P}, {F}), "float32")
{up_alloc}
    for tb in range(N):
        c = T.alloc_buffer((1,), "int32", scope="local")
        c[0] = 0
        for k in range({D}):
            if T.fabs({xk}) > TH[0]:
                KIN[c[0]] = k
                XIN[c[0]] = {xk}
                c[0] = c[0] + 1
{gemv1}
        for fb in {loop}({NFB}):
            n = T.alloc_buffer((1,), "int32", scope="local")
            hb = T.alloc_buffer(({NB},), "float32", scope="local")
{ub_alloc}
            for fl in T.vectorized({NB}):
                hb[fl] = {b1}
{ub_init}
            for p in range({P}):
                for fl in T.vectorized({NB}):
                    hb[fl] = hb[fl] + ACC1[p, fb * {NB} + fl]
{ub_sum}
            for fl in T.vectorized({NB}):
                hb[fl] = {act}
            n[0] = 0
            for fl in range({NB}):
                if T.fabs(hb[fl]) > TH[1]:
                    IDX[fb * {NB} + n[0]] = fb * {NB} + fl
                    VAL[fb * {NB} + n[0]] = hb[fl]
                    n[0] = n[0] + 1
            CNT[fb] = n[0]
{down}
'''

_UP = {  # gated FFNs: the up projection, the same split-K input-sparse GEMV on WU
    "up_alloc": '''    ACCU = T.alloc_buffer(({P}, {F}), "float32")''',
    "up_zero": '''            for fs in range({F} // {VF}):
                for v in T.vectorized({VF}):
                    ACCU[p, fs * {VF} + v] = T.float32(0)''',
    "up_axpy4": '''                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACCU[p, fs * {VF} + v] = ACCU[p, fs * {VF} + v] + {axpy4_u}''',
    "up_axpy1": '''                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACCU[p, fs * {VF} + v] = ACCU[p, fs * {VF} + v] + XIN[q] * WU[KIN[q], fs * {VF} + v]''',
    "ub_alloc": '''            ub = T.alloc_buffer(({NB},), "float32", scope="local")''',
    "ub_init": '''            for fl in T.vectorized({NB}):
                ub[fl] = T.float32(0)''',
    "ub_sum": '''            for p in range({P}):
                for fl in T.vectorized({NB}):
                    ub[fl] = ub[fl] + ACCU[p, fb * {NB} + fl]''',
}


def teal_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                rows: int = ROWS) -> str:
    """TVMScript of the TEAL decode kernel. Of the tiling: ``mr`` must be 1, ``nr1`` and
    ``nr3`` are the vector widths over d_ff and d_out, ``nb`` the neurons per activation task."""
    check(spec, "teal", tiling)
    t = tiling
    if spec.d_ff % t.nr1:
        raise CodegenError(f"tiling nr1={t.nr1} does not divide d_ff {spec.d_ff}")
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "NB": t.nb, "NFB": spec.d_ff // t.nb,
        "VF": t.nr1, "VO": t.nr3, "P": parts, "symbol": symbol, "params": params(spec),
        "loop": "T.parallel" if t.parallel else "range",
        "quads": QUADS.format(P=parts, R=rows), "rest": REST.format(P=parts, R=rows),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_1": axpy("W1", f"fs * {t.nr1} + v", "XIN", "KIN", parts, rows),
        "axpy4_2": axpy("W2", f"js * {t.nr3} + v", "LVAL", "LIDX", parts, rows),
    }
    act = ACTIVATIONS[spec.activation].format(v="hb[fl]")
    if spec.gated:
        act = f"({act}) * ({ACTIVATIONS[spec.up_activation].format(v='ub[fl]')})"
    if "h" in spec.centers:
        act = f"({act}) - HC[fb * {t.nb} + fl]"
    fmt["act"] = act
    fmt["xk"] = "X[tb, k] - XC[k]" if "x" in spec.centers else "X[tb, k]"
    fmt["axpy4_u"] = axpy("WU", f"fs * {t.nr1} + v", "XIN", "KIN", parts, rows)
    fmt["axpy1_1"] = f"XIN[q] * W1[KIN[q], fs * {t.nr1} + v]"
    for key, text in _UP.items():
        fmt[key] = text.format(**fmt) if spec.gated else ""
    fmt["gemv1"] = gemv1(fmt, fmt)
    fmt["down"] = DOWN.format(**fmt)
    return (HEADER + _TEAL).format(**fmt)


def teal_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                  rows: int = ROWS):
    return parse(teal_source(spec, tiling, symbol, parts, rows), symbol)
