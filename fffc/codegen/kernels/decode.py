"""Shared pieces of the one-token (decode) SparseFFN kernels: modes teal, cats, predictor.

Each of those kernels handles one token at a time in phases: compactions into lists,
GEMVs split over their reduction dimension into ``PARTS`` tasks with private accumulator
rows (each task streams whole contiguous weight rows, ``ROWS`` per pass), and the common
tail ``DOWN``: the down projection over the listed neurons. Here: the activation
expressions, the split-K index arithmetic, ``DOWN``, the parameter list and spec checks.
"""

from __future__ import annotations

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .sparse_ffn import Tiling, check_tiling
from .text import TOKEN_MAJOR_HEAD

PARTS = 4  # split-K tasks of the GEMVs, each with a private accumulator row
ROWS = 4  # weight rows per accumulator pass (independent streams in flight)

ACTIVATIONS = {  # TIR of each activation on the expression {v}
    "none": "{v}",
    "relu": "T.max({v}, T.float32(0))",
    "gelu": "T.float32(0.5) * {v} * (T.float32(1) + T.erf({v} * T.float32(0.7071067811865476)))",
    "gelu_tanh": "T.float32(0.5) * {v} * (T.float32(1) + T.tanh(T.float32(0.7978845608028654) * "
                 "({v} + T.float32(0.044715) * {v} * {v} * {v})))",
    "silu": "{v} * T.sigmoid({v})",
}

# Signature, token-major X and Y, and the buffers of the common tail.
HEADER = TOKEN_MAJOR_HEAD + '''    IDX = T.alloc_buffer(({F},), "int32")
    VAL = T.alloc_buffer(({F},), "float32")
    CNT = T.alloc_buffer(({NFB},), "int32")
    LIDX = T.alloc_buffer(({F},), "int32")
    LVAL = T.alloc_buffer(({F},), "float32")
    ACC2 = T.alloc_buffer(({P}, {DO}), "float32")
'''

# Phase 1 of the gate-first and teal kernels: the GEMV split over the c[0] listed input
# channels into private rows ACC1[p] ({axpy4_1}: a pass's term over ROWS rows, {axpy1_1}:
# row q's alone); ``gemv1`` adds teal's gated up projection (ACCU) to the same passes.
GEMV1 = '''        for p in {loop}({P}):
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
                        ACC1[p, fs * {VF} + v] = ACC1[p, fs * {VF} + v] + {axpy1_1}
{up_axpy1}'''


def gemv1(fmt: dict, up: dict[str, str] | None = None) -> str:
    """``GEMV1`` filled from ``fmt``, with ``up``'s ACCU lines (up_zero, up_axpy4,
    up_axpy1) in its passes, or none."""
    return GEMV1.format(**{**fmt, **{k: (up or {}).get(k, "")
                                     for k in ("up_zero", "up_axpy4", "up_axpy1")}})

# A task's share [lo, hi) of the c[0] listed rows, and its passes of {R} rows.
LO = "c[0] * p // {P}"
_HI = "c[0] * (p + 1) // {P}"
QUADS = f"({_HI} - {LO}) // {{R}}"
REST = f"range({LO} + {QUADS} * {{R}}, {_HI})"

# The common tail: concatenate the blocks' lists of (neuron, value), then
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

FOLD = '''                    for v in T.vectorized({half}):
                        {buf}[v] = {buf}[v] + {buf}[v + {half}]'''


def folds(lanes: int, bufs: tuple[str, ...] = ("part",)) -> str:
    """Halving sums of ``lanes``-wide partial dot products into element 0."""
    out, half = [], lanes // 2
    while half >= 1:
        out.append(FOLD.format(half=half, buf=bufs[0]) + "".join(
            "\n" + FOLD.format(half=half, buf=b).splitlines()[1] for b in bufs[1:]))
        half //= 2
    return "\n".join(out)


def axpy(w: str, col: str, xs: str, ks: str, parts: int, rows: int) -> str:
    """The term ``Σ_j xs[q+j] · w[ks[q+j], col]`` of a task's pass q4 over ``rows`` rows."""
    q = f"{LO.format(P=parts)} + q4 * {rows}"
    return " + ".join(f"{xs}[{q} + {j}] * {w}[{ks}[{q} + {j}], {col}]" for j in range(rows))


def params(spec: KernelSpec) -> str:
    """The kernel's parameter list for ``spec.arg_names()``. Layouts per mode: W1 [d_in,
    d_ff] (predictor: [d_ff, d_in]); WU [d_in, d_ff] for teal, [d_ff, d_in] otherwise."""
    d, f, do, r = spec.d_in, spec.d_ff, spec.d_out, spec.rank
    w1 = (f, d) if spec.mode == "predictor" else (d, f)
    wu = (d, f) if spec.mode == "teal" else (f, d)
    shapes = {"X": "x: T.handle", "W1": f'W1: T.Buffer({w1}, "float32", align=4)',
              "B1": f'B1: T.Buffer(({f},), "float32", align=4)',
              "W2": f'W2: T.Buffer(({f}, {do}), "float32", align=4)',
              "B2": f'B2: T.Buffer(({do},), "float32", align=4)',
              "WU": f'WU: T.Buffer({wu}, "float32", align=4)',
              "TH": 'TH: T.Buffer((2,), "float32", align=4)',
              "PA": f'PA: T.Buffer(({d}, {r}), "float32", align=4)',
              "PB": f'PB: T.Buffer(({r}, {f}), "float32", align=4)',
              "PC": f'PC: T.Buffer(({f},), "float32", align=4)',
              "XC": f'XC: T.Buffer(({d},), "float32", align=4)',
              "HC": f'HC: T.Buffer(({f},), "float32", align=4)', "Y": "y: T.handle"}
    return ", ".join(shapes[a] for a in spec.arg_names())


def check(spec: KernelSpec, mode: str, tiling: Tiling) -> None:
    """Raise CodegenError for a spec/tiling the ``mode`` decode kernel cannot compute."""
    if spec.op != "SparseFFN" or spec.mode != mode:
        raise CodegenError(f"not a SparseFFN mode={mode} spec: {spec}")
    if spec.activation not in ACTIVATIONS or spec.activation == "none":
        raise CodegenError(f"SparseFFN {mode}: activation {spec.activation!r} has no kernel")
    if spec.up_activation not in ("none", "relu"):
        raise CodegenError(f"SparseFFN up_activation {spec.up_activation!r} is not supported")
    if spec.centers and (spec.mode != "teal" or ("x" in spec.centers and spec.gated)):
        raise CodegenError("SparseFFN centers: mode teal only, XC for dense FFNs only")
    if spec.dtype != "float32":
        raise CodegenError(f"SparseFFN kernels are float32 only, got {spec.dtype!r}")
    check_tiling(spec, tiling)
    if tiling.mr != 1:
        raise CodegenError(f"the {mode} kernel takes one token per tile (mr=1)")

