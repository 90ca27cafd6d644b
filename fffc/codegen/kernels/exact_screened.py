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

from __future__ import annotations

import numpy as np

from fffc.errors import CodegenError
from fffc.ops import KernelSpec

from .decode import (
    ACTIVATIONS,
    DOWN,
    HEADER,
    LO,
    PARTS,
    QUADS,
    REST,
    ROWS,
    check,
    folds,
    gemv1,
)
from .sparse_ffn import Tiling
from .text import indent, parse, with_weight_dtype

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


_SCREENED = '''
    ACC1 = T.alloc_buffer(({P}, {F}), "float32")
    CAND = T.alloc_buffer(({F},), "int32")
    for tb in range(N):
        c = T.alloc_buffer((1,), "int32", scope="local")
        nx = T.alloc_buffer((3,), "float32", scope="local")
        c[0] = {D}
        nx[0] = T.float32(0)
        for k in range({D}):
            nx[0] = T.max(nx[0], T.fabs(X[tb, k]))
        nx[1] = T.float32(0)
        nx[2] = T.float32(1) / nx[0]
        for k in range({D}):
            nx[1] = nx[1] + (X[tb, k] * nx[2]) * (X[tb, k] * nx[2])
        if nx[0] > T.float32(0):
            nx[0] = nx[0] * T.sqrt(nx[1])
{gemv1}
        for fb in {loop}({NFB}):
            n = T.alloc_buffer((2,), "int32", scope="local")
            hb = T.alloc_buffer(({NB},), "float32", scope="local")
{part_alloc}
            for fl in T.vectorized({NB}):
                hb[fl] = {b1}
            for p in range({P}):
                for fl in T.vectorized({NB}):
                    hb[fl] = hb[fl] + ACC1[p, fb * {NB} + fl]
            n[0] = 0
            for fl in range({NB}):
                if T.Not(hb[fl] < T.float32(0) - (nx[0] * E[0, fb * {NB} + fl] + E[1, fb * {NB} + fl])):
                    CAND[fb * {NB} + n[0]] = fb * {NB} + fl
                    n[0] = n[0] + 1
            n[1] = 0
            for g in range(n[0] // {RR}):
{group}
            for q in range(n[0] // {RR} * {RR}, n[0]):
{single}
            CNT[fb] = n[1]
{down}
        STAT[0] = c[0]
'''


SCREEN_MAX_ACTIVE = 0.15  # the shim's crossover (cpu/screen.h): bench/bench_screen.py,
# ReLU 768/3072, screened / decode 0.84–0.94 at 10% active neurons, 0.88–1.05 at 20%,
# 1.5–1.6 at 50% (BENCHMARKS.md)
RECOMPUTE_ROWS = 4  # candidates recomputed together: rows of W1T streamed side by side


def _recompute(rows: int, vl: int, d: int, b1: str, index: str, up: str | None) -> str:
    """Float32 dots of ``rows`` candidates (``index``: CAND position of row r, with {r}) with
    x, each listed with its activation when non-zero (IDX, VAL at n[1]). ``up`` (gated: the
    up activation's TIR on {v}): the dot with the neuron's row of WU too, in the same pass
    (nearly every candidate has a positive gate), and the activation relu(gate)·up(u)."""
    dots = [(f"{acc}{r}", weights, index.format(r=r))  # (accumulator, weight rows, CAND position)
            for acc, weights in [("part", "W1T"), *([("upart", "WU")] if up else [])]
            for r in range(rows)]
    zero = "\n".join(f"""for v in T.vectorized({vl}):
    {b}[v] = T.float32(0)""" for b, _, _ in dots)
    acc = "\n".join(f"""    for v in T.vectorized({vl}):
        {b}[v] = {b}[v] + X[tb, ks * {vl} + v] * {w}[CAND[{at}], ks * {vl} + v]"""
                     for b, w, at in dots)
    fold = "\n".join(line[20:] for line in folds(vl, tuple(b for b, _, _ in dots)).splitlines())
    emit = []
    for r in range(rows):
        j = f"CAND[{index.format(r=r)}]"
        gate = f"part{r}[0] + {b1.format(j=j)}"
        act = gate if up is None else f"({gate}) * ({up.format(v=f'upart{r}[0]')})"
        emit.append(f"""if {gate} > T.float32(0):
    if T.fabs({act}) > T.float32(0):
        IDX[fb * {{NB}} + n[1]] = {j}
        VAL[fb * {{NB}} + n[1]] = {act}
        n[1] = n[1] + 1""")
    return "\n".join([zero, f"for ks in range({d // vl}):", acc, fold, *emit])


def screened_arg_names(spec: KernelSpec) -> list[str]:
    """The screened kernel's arguments: W1 replaced by its three derived inputs, and STAT
    (int32 [1]: the neurons the last token listed) before Y, for the shim's choice of kernel."""
    names = spec.arg_names()
    i = names.index("W1")
    return [*names[:i], "WS", "W1T", "E", *names[i + 1:-1], "STAT", names[-1]]


def _params(spec: KernelSpec) -> str:
    d, f, do = spec.d_in, spec.d_ff, spec.d_out
    shapes = {"X": "x: T.handle", "WS": f'WS: T.Buffer(({d}, {f}), "float32", align=4)',
              "W1T": f'W1T: T.Buffer(({f}, {d}), "float32", align=4)',
              "E": f'E: T.Buffer((2, {f}), "float32", align=4)',
              "B1": f'B1: T.Buffer(({f},), "float32", align=4)',
              "W2": f'W2: T.Buffer(({f}, {do}), "float32", align=4)',
              "B2": f'B2: T.Buffer(({do},), "float32", align=4)',
              "WU": f'WU: T.Buffer(({f}, {d}), "float32", align=4)',
              "STAT": 'STAT: T.Buffer((1,), "int32", align=4)', "Y": "y: T.handle"}
    return ", ".join(shapes[a] for a in screened_arg_names(spec))


def screenable(spec: KernelSpec) -> bool:
    """Whether ``spec`` has a screened kernel: exact, ReLU (the gate of ReGLU / dReLU),
    float32."""
    return (spec.op == "SparseFFN" and spec.mode == "exact" and spec.activation == "relu"
            and spec.up_activation in ("none", "relu") and spec.dtype == "float32")


def screened_source(spec: KernelSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                    rows: int = ROWS) -> str:
    """TVMScript of the screened kernel (the decode kernel's tiling: ``nr1``, ``nr3`` vector
    widths over d_ff and d_out, ``nb`` neurons per task, ``vl`` lanes of the row dots)."""
    if not screenable(spec):
        raise CodegenError(f"no screened kernel for {spec} (exact ReLU-gated FFNs only)")
    check(spec, "exact", tiling)
    if parts > 64:
        raise CodegenError(f"{parts} split-K parts: the screen's bound (gamma) allows 64")
    t = tiling
    q = f"{LO.format(P=parts)} + q4 * {rows}"
    fmt: dict[str, object] = {
        "D": spec.d_in, "F": spec.d_ff, "DO": spec.d_out, "NB": t.nb, "NFB": spec.d_ff // t.nb,
        "VF": t.nr1, "VO": t.nr3, "VL": t.vl, "P": parts, "symbol": symbol,
        "params": _params(spec), "loop": "T.parallel" if t.parallel else "range",
        "quads": QUADS.format(P=parts, R=rows), "rest": REST.format(P=parts, R=rows),
        "b1": f"B1[fb * {t.nb} + fl]" if spec.has_b1 else "T.float32(0)",
        "b2": f"B2[js * {t.nr3} + v]" if spec.has_b2 else "T.float32(0)",
        "axpy4_1": " + ".join(f"X[tb, {q} + {j}] * WS[{q} + {j}, fs * {t.nr1} + v]"
                              for j in range(rows)),
        "axpy1_1": f"X[tb, q] * WS[q, fs * {t.nr1} + v]",
        "axpy4_2": " + ".join(f"LVAL[{q} + {j}] * W2[LIDX[{q} + {j}], js * {t.nr3} + v]"
                              for j in range(rows)),
        "RR": RECOMPUTE_ROWS,
        "part_alloc": indent("\n".join(
            f'{b}{r} = T.alloc_buffer(({t.vl},), "float32", scope="local")'
            for b in ("part", "upart")[:1 + spec.gated] for r in range(RECOMPUTE_ROWS)), 12),
    }
    b1 = "B1[{j}]" if spec.has_b1 else "T.float32(0)"
    up = ACTIVATIONS[spec.up_activation] if spec.gated else None
    group = _recompute(RECOMPUTE_ROWS, t.vl, spec.d_in, b1,
                       f"fb * {t.nb} + g * {RECOMPUTE_ROWS} + {{r}}", up)
    single = _recompute(1, t.vl, spec.d_in, b1, f"fb * {t.nb} + q", up)
    fmt["group"] = indent(group.replace("{NB}", str(t.nb)), 16)
    fmt["single"] = indent(single.replace("{NB}", str(t.nb)), 16)
    fmt["gemv1"] = gemv1(fmt)
    fmt["down"] = DOWN.format(**fmt)
    return with_weight_dtype((HEADER + _SCREENED).format(**fmt), ["WS"], SCREEN_DTYPE)


def screened_primfunc(spec: KernelSpec, tiling: Tiling, symbol: str):
    return parse(screened_source(spec, tiling, symbol), symbol)
