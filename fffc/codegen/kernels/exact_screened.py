"""``SparseFFN`` mode=exact, one token, ReLU FFNs and ReGLU/dReLU: a certified float16 screen.

The exact decode kernel (``exact_decode``) streams all of W1 (a gated FFN's gate weights)
in float32 to learn which neurons are positive, though only their signs matter for the ~90%
that are not. This variant streams a float16 copy ``WS`` of W1 instead (half the bytes)
and bounds its error:

    |ĥ_j − h_j| ≤ ‖x‖₂ · E[0, j] + E[1, j]

where h_j = x·W1[:, j] + B1[j] in real arithmetic, ĥ_j the float32 sum over WS, E[0, j] =
(‖W1[:, j] − WS[:, j]‖₂ + γ‖WS[:, j]‖₂)(1 + 2⁻⁸) and E[1, j] = γ|B1[j]|(1 + 2⁻⁸) with γ the
float32 summation bound of 2·d_in + 128 terms (Cauchy–Schwarz for the rounding of the
weights, the standard γₙ bound for the sums, a margin for ‖x‖₂ computed in float32). A
neuron whose ĥ_j lies below −bound is negative for certain and skipped; every other one
(the active ~10% and a thin band) is recomputed in float32 from its row of ``W1T`` (W1
neuron-major; gated: with its row of WU in the same pass) and listed for the down
projection when its activation is non-zero. So the output is the dense FFN's up to float
reassociation, as ``exact_decode``'s is, whatever the weights. (A non-finite or
overflowing value makes the bound non-finite or NaN, which screens nothing out.) ‖x‖₂ is
computed scaled by max|x| so it neither under- nor overflows.

Where many neurons are active the recompute costs more than the bytes it saves (the
rows of W1T are short, scattered reads): the kernel reports how many neurons it listed
(STAT) and the shim runs the plain decode kernel while that stays above
``SCREEN_MAX_ACTIVE`` of d_ff (re-trying the screen now and then).

The screen inputs (``screen_inputs``) are derived from W1 and B1, here for tests and
benchmarks and in the shim (``runtime/src/cpu/screen.cc``) once per weight: the artifact's
model keeps only W1. Per token: ~2 bytes per weight of W1 instead of 4, plus the rows of
the recomputed neurons, plus W2's rows of the positive ones.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

import numpy as np

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.contract.ops import UP_ACTIVATIONS

from .._tvm import T
from .decode import PARTS, ROWS, check, split_k
from .pieces import activation, bias, check_weight_dtype, folds, has_zeros, widen, with_args
from .sparse_ffn import Tiling

SCREEN_DTYPE = "float16"
MARGIN = 1 + 2.0**-8  # covers ‖x‖₂'s and E's own float32 rounding
_U = 2.0**-24  # float32 unit roundoff


def gamma(d_in: int) -> float:
    """γₙ for the screened sums: d_in products, up to 64 split-K parts and B1, n doubled
    for slack (the shim's twin uses the same n)."""
    n = 2 * d_in + 128
    return n * _U / (1 - n * _U)


def screen_inputs(w1: np.ndarray, b1: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(WS float16 [d_in, d_ff], W1T float32 [d_ff, d_in], E float32 [2, d_ff]) of W1 [d_in,
    d_ff] and B1 [d_ff] (None: no bias). The shim's C++ twin derives the same bound."""
    w32 = np.ascontiguousarray(w1, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        ws = w32.astype(np.float16)
        w, s = w32.astype(np.float64), ws.astype(np.float64)
        g = gamma(w32.shape[0])
        e0 = (np.sqrt(((w - s) ** 2).sum(axis=0)) + g * np.sqrt((s * s).sum(axis=0))) * MARGIN
        b = np.zeros(w32.shape[1]) if b1 is None else np.abs(np.asarray(b1, np.float64))
        e1 = g * b * MARGIN
    e = np.stack([e0, e1])
    e[~np.isfinite(e)] = np.inf  # a weight beyond float16's range: never screened out
    return ws, np.ascontiguousarray(w32.T), e.astype(np.float32)


SCREENED = "screened"  # the variant's name: an alternative to "decode" for 1 token

# Above this share of d_ff listed, the plain decode kernel is faster (the shim's crossover,
# cpu/screen.h; measured by bench/bench_screen.py).
SCREEN_MAX_ACTIVE = 0.15
RECOMPUTE_ROWS = 4  # candidates recomputed together: rows of W1T streamed side by side


def screened_arg_names(spec: SparseSpec) -> list[str]:
    """The screened kernel's arguments: W1 replaced by its three derived inputs, and STAT
    (int32 [1]: the neurons the last token listed) before Y, for the shim's choice of kernel."""
    names = spec.arg_names()
    i = names.index("W1")
    return [*names[:i], "WS", "W1T", "E", *names[i + 1:-1], "STAT", names[-1]]


def screenable(spec: SparseSpec) -> bool:
    """Whether ``spec`` has a screened kernel: exact, ReLU (the gate of ReGLU / dReLU),
    float32."""
    return (isinstance(spec, SparseSpec) and spec.mode is SparseMode.EXACT
            and has_zeros(spec.activation) and spec.up_activation in UP_ACTIVATIONS
            and spec.dtype == "float32")


def screened_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                      rows: int = ROWS, dtype: str = "float32"):
    """The screened kernel (the decode kernel's tiling: ``nr1``, ``nr3`` vector widths over
    d_ff and d_out, ``nb`` neurons per task, ``vl`` lanes of the row dots); WS stored as
    ``SCREEN_DTYPE``, the weights W1T, W2, WU as ``dtype``."""
    if not screenable(spec):
        raise CodegenError(f"no screened kernel for {spec} (exact ReLU-gated FFNs only)")
    check(spec, SparseMode.EXACT, tiling)
    if parts > 64:
        raise CodegenError(f"{parts} split-K parts: the screen's bound (gamma) allows 64")
    check_weight_dtype(dtype)
    t = tiling
    D, F, DO, P = spec.d_in, spec.d_ff, spec.d_out, parts
    NB, NFB, VL, RR = t.nb, spec.d_ff // t.nb, t.vl, RECOMPUTE_ROWS
    loop = T.parallel if t.parallel else T.serial
    gated, up = spec.gated, activation(spec.up_activation)
    gemv1, down = split_k(spec, t, parts, rows)

    def recompute(at, acc, acc_up, X, tb, W1T, WU, B1, CAND, IDX, VAL, n, fb):
        """Float32 dots with x of the candidates at CAND positions ``at + r``, one per buffer
        of ``acc`` (rows of W1T streamed side by side); each is listed (IDX, VAL at n[1])
        with its activation when that is non-zero. Gated: the dot with the neuron's row of
        WU too (into ``acc_up``), in the same pass (nearly every candidate has a positive
        gate), and the activation relu(gate)·up(u)."""
        dots = [*((b, W1T, at + r) for r, b in enumerate(acc)),
                *((b, WU, at + r) for r, b in enumerate(acc_up))]
        for b, _, _ in dots:
            with T.vectorized(VL) as v:
                T.buffer_store(b, T.float32(0), [v])
        with T.serial(D // VL) as ks:
            for b, w, i in dots:
                with T.vectorized(VL) as v:
                    T.buffer_store(b, b[v] + X[tb, ks * VL + v] * widen(w[CAND[i], ks * VL + v]), [v])
        folds([b for b, _, _ in dots], VL)
        for r, b in enumerate(acc):
            j = CAND[at + r]
            gate = b[0] + bias(B1, j)
            a = gate * up(acc_up[r][0]) if gated else gate
            with T.If(gate > T.float32(0)), T.Then(), T.If(T.fabs(a) > T.float32(0)), T.Then():
                T.buffer_store(IDX, j, [fb * NB + n[1]])
                T.buffer_store(VAL, a, [fb * NB + n[1]])
                T.buffer_store(n, n[1] + 1, [1])

    @T.jit
    def kernel(x: T.handle, WS: T.Buffer((D, F), SCREEN_DTYPE, align=4),
               W1T: T.Buffer((F, D), dtype, align=4), E: T.Buffer((2, F), "float32", align=4),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), dtype, align=4),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((F, D), dtype, align=4)),
               STAT: T.Buffer((1,), "int32", align=4), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        IDX = T.alloc_buffer((F,), "int32")
        VAL = T.alloc_buffer((F,), "float32")
        CNT = T.alloc_buffer((NFB,), "int32")
        LIDX = T.alloc_buffer((F,), "int32")
        LVAL = T.alloc_buffer((F,), "float32")
        ACC2 = T.alloc_buffer((P, DO), "float32")
        ACC1 = T.alloc_buffer((P, F), "float32")
        CAND = T.alloc_buffer((F,), "int32")
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            nx = T.alloc_buffer((3,), "float32", scope="local")
            # ‖x‖₂ into nx[0], computed scaled by max|x| (nx[2]: its inverse)
            c[0] = D
            nx[0] = T.float32(0)
            for k in range(D):
                nx[0] = T.max(nx[0], T.fabs(X[tb, k]))
            nx[1] = T.float32(0)
            nx[2] = T.float32(1) / nx[0]
            for k in range(D):
                nx[1] = nx[1] + (X[tb, k] * nx[2]) * (X[tb, k] * nx[2])
            if nx[0] > T.float32(0):
                nx[0] = nx[0] * T.sqrt(nx[1])
            # every input row (c[0] = d_in), of the float16 screen copy
            gemv1(ACC1, WS, None, None, lambda q: X[tb, q], lambda q: q, c)  # noqa: B023 (called while parsing)
            for fb in loop(NFB):
                n = T.alloc_buffer((2,), "int32", scope="local")
                hb = T.alloc_buffer((NB,), "float32", scope="local")
                dots = T.meta_var([T.alloc_buffer((VL,), "float32", scope="local") for _ in range(RR)])
                updots = T.meta_var([T.alloc_buffer((VL,), "float32", scope="local") for _ in range(RR)] if gated else [])
                for fl in T.vectorized(NB):
                    hb[fl] = bias(B1, fb * NB + fl)
                for p in range(P):
                    for fl in T.vectorized(NB):
                        hb[fl] = hb[fl] + ACC1[p, fb * NB + fl]
                # candidates: every neuron not certainly negative
                n[0] = 0
                for fl in range(NB):
                    if T.Not(hb[fl] < T.float32(0) - (nx[0] * E[0, fb * NB + fl] + E[1, fb * NB + fl])):
                        CAND[fb * NB + n[0]] = fb * NB + fl
                        n[0] = n[0] + 1
                n[1] = 0
                for g in range(n[0] // RR):
                    recompute(fb * NB + g * RR, dots, updots, X, tb, W1T, WU, B1, CAND, IDX, VAL, n, fb)
                for q in range(n[0] // RR * RR, n[0]):
                    recompute(fb * NB + q, dots[:1], updots[:1], X, tb, W1T, WU, B1, CAND, IDX, VAL, n, fb)
                CNT[fb] = n[1]
            down(Y, tb, c, IDX, VAL, CNT, LIDX, LVAL, ACC2, W2, B2)
            STAT[0] = c[0]

    return with_args(kernel, screened_arg_names(spec))
