"""``ai.fffc::SparseFFN`` mode=teal for CPUs: TEAL's thresholded FFN, computed sparsely.

The function (``passes/standard_forms.ffn`` with thresholds, ``fffc.reference.teal_ffn``):
x' = Where(|x| <= t_in, 0, x); a = act(x'·W1 + B1) [⊙ up_act(x'·WU)];
a' = Where(|a| <= t_hidden, 0, a); Y = a'·W2 + B2, with ``TH = [t_in, t_hidden]`` an input
(a negative t switches that threshold off). Per token:

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

from .._tvm import from_source
from .sparse_ffn import Tiling, check_tiling

PARTS = 4  # split-K tasks of both GEMVs, each with a private accumulator row
ROWS = 4  # weight rows per accumulator pass (independent streams in flight)

ACTIVATIONS = {  # TIR of each activation on the expression {v}
    "none": "{v}",
    "relu": "T.max({v}, T.float32(0))",
    "gelu": "T.float32(0.5) * {v} * (T.float32(1) + T.erf({v} * T.float32(0.7071067811865476)))",
    "gelu_tanh": "T.float32(0.5) * {v} * (T.float32(1) + T.tanh(T.float32(0.7978845608028654) * "
                 "({v} + T.float32(0.044715) * {v} * {v} * {v})))",
    "silu": "{v} * T.sigmoid({v})",
}

# A task's share [lo, hi) of the c[0] listed rows, and its passes of {R} rows.
_LO = "c[0] * p // {P}"
_HI = "c[0] * (p + 1) // {P}"
_QUADS = f"({_HI} - {_LO}) // {{R}}"
_REST = f"range({_LO} + {_QUADS} * {{R}}, {_HI})"

_TEAL = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
    KIN = T.alloc_buffer(({D},), "int32")
    XIN = T.alloc_buffer(({D},), "float32")
    ACC1 = T.alloc_buffer(({P}, {F}), "float32")
{up_alloc}
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
            if T.fabs(X[tb, k]) > TH[0]:
                KIN[c[0]] = k
                XIN[c[0]] = X[tb, k]
                c[0] = c[0] + 1
        for p in {loop}({P}):
            for fs in range({F} // {VF}):
                for v in T.vectorized({VF}):
                    ACC1[p, fs * {VF} + v] = T.float32(0)
{up_zero}
            for q4 in range({quads}):
                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACC1[p, fs * {VF} + v] = ACC1[p, fs * {VF} + v] + {axpy4_1}
{up_axpy4}
            for q in {rest}:
                for fs in range({F} // {VF}):
                    for v in T.vectorized({VF}):
                        ACC1[p, fs * {VF} + v] = ACC1[p, fs * {VF} + v] + XIN[q] * W1[KIN[q], fs * {VF} + v]
{up_axpy1}
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
{down}'''

# The decode kernels' common tail: concatenate the blocks' lists of (neuron, value), then
# the down projection split over the listed neurons (whole rows of W2, private
# accumulators, ``ROWS`` rows per pass) and Y = B2 + the parts.
DOWN = '''        c[0] = 0
        for fb in range({NFB}):
            for q in range(CNT[fb]):
                LIDX[c[0] + q] = IDX[fb * {NB} + q]
                LVAL[c[0] + q] = VAL[fb * {NB} + q]
            c[0] = c[0] + CNT[fb]
        for p in {loop}({P}):
            for js in range({DO} // {VO}):
                for v in T.vectorized({VO}):
                    ACC2[p, js * {VO} + v] = T.float32(0)
            for q4 in range({quads}):
                for js in range({DO} // {VO}):
                    for v in T.vectorized({VO}):
                        ACC2[p, js * {VO} + v] = ACC2[p, js * {VO} + v] + {axpy4_2}
            for q in {rest}:
                for js in range({DO} // {VO}):
                    for v in T.vectorized({VO}):
                        ACC2[p, js * {VO} + v] = ACC2[p, js * {VO} + v] + LVAL[q] * W2[LIDX[q], js * {VO} + v]
        for js in range({DO} // {VO}):
            for v in T.vectorized({VO}):
                Y[tb, js * {VO} + v] = {b2}
            for p in range({P}):
                for v in T.vectorized({VO}):
                    Y[tb, js * {VO} + v] = Y[tb, js * {VO} + v] + ACC2[p, js * {VO} + v]
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


def check_teal_spec(spec: KernelSpec) -> None:
    if spec.op != "SparseFFN" or spec.mode != "teal":
        raise CodegenError(f"not a SparseFFN mode=teal spec: {spec}")
    if spec.activation not in ACTIVATIONS or spec.activation == "none":
        raise CodegenError(f"SparseFFN teal: activation {spec.activation!r} has no kernel")
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
              "WU": f'WU: T.Buffer(({d}, {f}), "float32", align=4)',
              "TH": 'TH: T.Buffer((2,), "float32", align=4)', "Y": "y: T.handle"}
    return ", ".join(shapes[a] for a in spec.arg_names())


def _axpy4(w: str, col: str, xs: str, ks: str, parts: int, rows: int) -> str:
    """The term ``Σ_j xs[q+j] · w[ks[q+j], col]`` of a task's pass q4 over ``rows`` rows."""
    q = f"{_LO.format(P=parts)} + q4 * {rows}"
    return " + ".join(f"{xs}[{q} + {j}] * {w}[{ks}[{q} + {j}], {col}]" for j in range(rows))


def teal_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                rows: int = ROWS) -> str:
    """TVMScript of the TEAL decode kernel. Of the tiling: ``mr`` must be 1, ``nr1`` and
    ``nr3`` are the vector widths over d_ff and d_out, ``nb`` the neurons per activation task."""
    check_teal_spec(spec)
    check_tiling(spec, tiling)
    if tiling.mr != 1:
        raise CodegenError("the TEAL kernel takes one token per tile (mr=1)")
    t = tiling
    if spec.d_ff % t.nr1:
        raise CodegenError(f"tiling nr1={t.nr1} does not divide d_ff {spec.d_ff}")
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "NB": t.nb, "NFB": spec.d_ff // t.nb,
        "VF": t.nr1, "VO": t.nr3, "P": parts, "symbol": symbol, "params": _params(spec),
        "loop": "T.parallel" if t.parallel else "range",
        "quads": _QUADS.format(P=parts, R=rows), "rest": _REST.format(P=parts, R=rows),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_1": _axpy4("W1", f"fs * {t.nr1} + v", "XIN", "KIN", parts, rows),
        "axpy4_2": _axpy4("W2", f"js * {t.nr3} + v", "LVAL", "LIDX", parts, rows),
    }
    act = ACTIVATIONS[spec.activation].format(v="hb[fl]")
    if spec.gated:
        act = f"({act}) * ({ACTIVATIONS[spec.up_activation].format(v='ub[fl]')})"
    fmt["act"] = act
    fmt["axpy4_u"] = _axpy4("WU", f"fs * {t.nr1} + v", "XIN", "KIN", parts, rows)
    for key, text in _UP.items():
        fmt[key] = text.format(**fmt) if spec.gated else ""
    fmt["down"] = DOWN.format(**fmt)
    return _TEAL.format(**fmt)


def teal_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                  rows: int = ROWS):
    source = teal_source(spec, tiling, symbol, parts, rows)
    try:
        return from_source(source)
    except Exception as e:  # TVMScript errors carry the offending line; keep it typed
        raise CodegenError(f"TVMScript generation failed for {symbol}: {e}") from e
