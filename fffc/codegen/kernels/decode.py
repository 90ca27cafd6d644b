"""Shared pieces of the one-token (decode) SparseFFN kernels: modes teal, cats, predictor.

Each of those kernels handles one token at a time in phases: compactions into lists,
GEMVs split over their reduction dimension into ``PARTS`` tasks with private accumulator
rows (each task streams whole contiguous weight rows, ``ROWS`` per pass), and the common
tail: the down projection over the listed neurons. Here: the split-K phases as TVMScript
macros (``split_k``), the thresholds of exact skipping, and the spec checks.
"""

from __future__ import annotations

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from .pieces import bias, check_activations, widen
from .sparse_ffn import Tiling, check_tiling

PARTS = 4  # split-K tasks of the GEMVs, each with a private accumulator row
ROWS = 4  # weight rows per accumulator pass (independent streams in flight)

# Skipping exactly (``exact_decode``): the thresholds [t_in, t_hidden] fixed to "no input
# threshold" and "non-zero" (|a| > 0).
EXACT_THRESHOLDS = (-1.0, 0.0)


def threshold(TH, i: int):
    """TH[i], or exact skipping's fixed threshold where the kernel has no input TH."""
    return TH[i] if TH is not None else T.float32(EXACT_THRESHOLDS[i])


def split_k(spec: SparseSpec, tiling: Tiling, parts: int, rows: int):
    """The macros ``(gemv1, down)`` of a decode kernel's split-K phases: ``parts`` tasks
    (one parallel region where ``tiling.parallel``), each streaming its share [lo, hi) of the
    c[0] listed rows into a private accumulator row, ``rows`` rows per pass. Vector steps:
    ``tiling.nr1`` lanes over d_ff, ``tiling.nr3`` over d_out."""
    P, R = parts, rows
    F, DO, NB, NFB, VF, VO = (spec.d_ff, spec.d_out, tiling.nb, spec.d_ff // tiling.nb,
                              tiling.nr1, tiling.nr3)
    loop = T.parallel if tiling.parallel else T.serial

    def axpy(acc, W, xs, ks, lo, q4, col):
        """``acc`` plus pass q4's term Σ_j xs(q+j) · W[ks(q+j), col] over ``rows`` rows."""
        q = lo + q4 * R
        for j in range(R):
            acc = acc + xs(q + j) * widen(W[ks(q + j), col])
        return acc

    @T.macro
    def gemv(ACC, W, ACC_UP, W_UP, xs, ks, c, width, vw):
        """ACC[p, :width] = Σ over task p's rows q of xs(q) · W[ks(q), :] in ``vw``-wide
        steps; ACC_UP (not None): the same over W_UP in the same passes."""
        for p in loop(P):
            lo = T.meta_var(c[0] * p // P)
            hi = T.meta_var(c[0] * (p + 1) // P)
            for fs in range(width // vw):
                for v in T.vectorized(vw):
                    ACC[p, fs * vw + v] = T.float32(0)
            if ACC_UP is not None:
                for fs in range(width // vw):
                    for v in T.vectorized(vw):
                        ACC_UP[p, fs * vw + v] = T.float32(0)
            for q4 in range((hi - lo) // R):
                for fs in range(width // vw):
                    for v in T.vectorized(vw):
                        ACC[p, fs * vw + v] = axpy(ACC[p, fs * vw + v], W, xs, ks, lo, q4, fs * vw + v)
                if ACC_UP is not None:
                    for fs in range(width // vw):
                        for v in T.vectorized(vw):
                            ACC_UP[p, fs * vw + v] = axpy(ACC_UP[p, fs * vw + v], W_UP, xs, ks, lo, q4, fs * vw + v)
            for q in range(lo + (hi - lo) // R * R, hi):
                for fs in range(width // vw):
                    for v in T.vectorized(vw):
                        ACC[p, fs * vw + v] = ACC[p, fs * vw + v] + xs(q) * widen(W[ks(q), fs * vw + v])
                if ACC_UP is not None:
                    for fs in range(width // vw):
                        for v in T.vectorized(vw):
                            ACC_UP[p, fs * vw + v] = ACC_UP[p, fs * vw + v] + xs(q) * widen(W_UP[ks(q), fs * vw + v])

    @T.macro
    def gemv1(ACC1, W1, ACCU, WU, xs, ks, c):
        """Phase 1: ACC1[p] = Σ over task p's share of the c[0] listed input rows q:
        xs(q) · W1[ks(q), :] (ACCU, gated teal: the same over WU)."""
        gemv(ACC1, W1, ACCU, WU, xs, ks, c, F, VF)

    @T.macro
    def down(Y, tb, c, IDX, VAL, CNT, LIDX, LVAL, ACC2, W2, B2):
        """The common tail: concatenate the blocks' lists of (neuron, value), then the down
        projection split over the listed neurons (whole rows of W2, private accumulators)
        and Y = B2 + the parts."""
        c[0] = 0
        for fb in range(NFB):
            for q in range(CNT[fb]):
                LIDX[c[0] + q] = IDX[fb * NB + q]
                LVAL[c[0] + q] = VAL[fb * NB + q]
            c[0] = c[0] + CNT[fb]
        gemv(ACC2, W2, None, None, lambda q: LVAL[q], lambda q: LIDX[q], c, DO, VO)
        for js in range(DO // VO):
            for v in T.vectorized(VO):
                Y[tb, js * VO + v] = bias(B2, js * VO + v)
            for p in range(P):
                for v in T.vectorized(VO):
                    Y[tb, js * VO + v] = Y[tb, js * VO + v] + ACC2[p, js * VO + v]

    return gemv1, down


def check(spec: SparseSpec, mode: SparseMode, tiling: Tiling) -> None:
    """Raise CodegenError for a spec/tiling the ``mode`` decode kernel cannot compute."""
    if not isinstance(spec, SparseSpec) or spec.mode is not mode:
        raise CodegenError(f"not a SparseFFN mode={mode} spec: {spec}")
    check_activations(f"SparseFFN {mode}", spec.activation, spec.up_activation)
    if spec.centers and (spec.mode is not SparseMode.TEAL or ("x" in spec.centers and spec.gated)):
        raise CodegenError("SparseFFN centers: mode teal only, XC for dense FFNs only")
    if spec.dtype != "float32":
        raise CodegenError(f"SparseFFN kernels are float32 only, got {spec.dtype!r}")
    check_tiling(spec, tiling)
    if tiling.mr != 1:
        raise CodegenError(f"the {mode} kernel takes one token per tile (mr=1)")
