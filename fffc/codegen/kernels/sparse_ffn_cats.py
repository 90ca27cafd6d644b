"""``ai.fffc::SparseFFN`` mode=cats for CPUs: CATS's gate threshold, gate first.

The function (``fffc.verify.reference.cats_ffn``), gated FFNs only: x' = Where(|x| <= t_in, 0, x)
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

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from .decode import PARTS, ROWS, check, split_k, threshold
from .pieces import activation, bias, check_weight_dtype, folds, widen, with_args
from .sparse_ffn import Tiling


def check_cats_spec(spec: SparseSpec) -> None:
    if not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")


def cats_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                  dtype: str = "float32", args: list[str] | None = None):
    """The CATS decode kernel; the weights W1, W2, WU stored as ``dtype``. Tiling as
    ``sparse_ffn_teal``, plus ``vl``: lanes of the up projection's row dot products.
    ``args``: the kernel's arguments where they are not ``spec.arg_names()`` (exact
    skipping: no TH, its thresholds fixed)."""
    check(spec, SparseMode.CATS, tiling)
    check_cats_spec(spec)
    check_weight_dtype(dtype)
    t = tiling
    D, F, DO, P = spec.d_in, spec.d_ff, spec.d_out, parts
    NB, NFB, VL = t.nb, spec.d_ff // t.nb, t.vl
    loop = T.parallel if t.parallel else T.serial
    act, up = activation(spec.activation), activation(spec.up_activation)
    gemv1, down = split_k(spec, t, parts, ROWS)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F), dtype, align=4),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), dtype, align=4),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Buffer((F, D), dtype, align=4),
               TH: T.Optional(T.Buffer((2,), "float32", align=4)), y: T.handle):
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
        KIN = T.alloc_buffer((D,), "int32")
        XIN = T.alloc_buffer((D,), "float32")
        XZ = T.alloc_buffer((D,), "float32")
        ACC1 = T.alloc_buffer((P, F), "float32")
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            c[0] = 0
            for k in range(D):
                XZ[k] = T.float32(0)
                if T.fabs(X[tb, k]) > threshold(TH, 0):
                    XZ[k] = X[tb, k]
                    KIN[c[0]] = k
                    XIN[c[0]] = X[tb, k]
                    c[0] = c[0] + 1
            gemv1(ACC1, W1, None, None, lambda q: XIN[q], lambda q: KIN[q], c)
            for fb in loop(NFB):
                n = T.alloc_buffer((1,), "int32", scope="local")
                hb = T.alloc_buffer((NB,), "float32", scope="local")
                part = T.alloc_buffer((VL,), "float32", scope="local")
                for fl in T.vectorized(NB):
                    hb[fl] = bias(B1, fb * NB + fl)
                for p in range(P):
                    for fl in T.vectorized(NB):
                        hb[fl] = hb[fl] + ACC1[p, fb * NB + fl]
                for fl in T.vectorized(NB):
                    hb[fl] = act(hb[fl])
                n[0] = 0
                for fl in range(NB):
                    if T.fabs(hb[fl]) > threshold(TH, 1):
                        for v in T.vectorized(VL):
                            part[v] = T.float32(0)
                        for kb in range(D // VL):
                            for v in T.vectorized(VL):
                                part[v] = part[v] + XZ[kb * VL + v] * widen(WU[fb * NB + fl, kb * VL + v])
                        folds([part], VL)
                        part[0] = hb[fl] * up(part[0])
                        if part[0] != T.float32(0):
                            IDX[fb * NB + n[0]] = fb * NB + fl
                            VAL[fb * NB + n[0]] = part[0]
                            n[0] = n[0] + 1
                CNT[fb] = n[0]
            down(Y, tb, c, IDX, VAL, CNT, LIDX, LVAL, ACC2, W2, B2)

    return with_args(kernel, spec.arg_names() if args is None else args)
