"""``ai.fffc::SparseFFN`` mode=predictor for CPUs: a low-rank predictor picks the neurons.

The function (``fffc.verify.reference.predictor_ffn``): neurons S = {i : ((x·PA)·PB + PC)_i > 0}
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

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from .decode import PARTS, ROWS, check, split_k
from .pieces import activation, bias, check_weight_dtype, folds, widen, with_args
from .sparse_ffn import Tiling


def check_predictor_spec(spec: SparseSpec) -> None:
    if spec.rank < 1:
        raise CodegenError("SparseFFN predictor: the spec carries no rank")


def predictor_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                       dtype: str = "float32"):
    """The predictor decode kernel; the weights W1, W2, WU stored as ``dtype``. Of the
    tiling: ``mr`` must be 1, ``nb`` neurons per scoring task, ``vl`` lanes of the row dot
    products, ``nr3`` the vector width over d_out."""
    check(spec, SparseMode.PREDICTOR, tiling)
    check_predictor_spec(spec)
    check_weight_dtype(dtype)
    t = tiling
    D, F, DO, RANK, P = spec.d_in, spec.d_ff, spec.d_out, spec.rank, parts
    NB, NFB, VL = t.nb, spec.d_ff // t.nb, t.vl
    loop = T.parallel if t.parallel else T.serial
    gated = spec.gated
    act, up = activation(spec.activation), activation(spec.up_activation)
    _, down = split_k(spec, t, parts, ROWS)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, D), dtype, align=4),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), dtype, align=4),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((F, D), dtype, align=4)),
               PA: T.Buffer((D, RANK), "float32", align=4),
               PB: T.Buffer((RANK, F), "float32", align=4),
               PC: T.Buffer((F,), "float32", align=4), y: T.handle):
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
        Z = T.alloc_buffer((P, RANK), "float32")
        ZS = T.alloc_buffer((RANK,), "float32")
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            for p in loop(P):
                for r in T.vectorized(RANK):
                    Z[p, r] = T.float32(0)
                for k in range(D * p // P, D * (p + 1) // P):
                    for r in T.vectorized(RANK):
                        Z[p, r] = Z[p, r] + X[tb, k] * PA[k, r]
            for r in T.vectorized(RANK):
                ZS[r] = T.float32(0)
            for p in range(P):
                for r in T.vectorized(RANK):
                    ZS[r] = ZS[r] + Z[p, r]
            for fb in loop(NFB):
                n = T.alloc_buffer((1,), "int32", scope="local")
                sb = T.alloc_buffer((NB,), "float32", scope="local")
                part = T.alloc_buffer((VL,), "float32", scope="local")
                if gated:  # the up projection's dot, in the same pass over x
                    pu = T.alloc_buffer((VL,), "float32", scope="local")
                h = T.alloc_buffer((1,), "float32", scope="local")
                for fl in T.vectorized(NB):
                    sb[fl] = PC[fb * NB + fl]
                for r in range(RANK):
                    for fl in T.vectorized(NB):
                        sb[fl] = sb[fl] + ZS[r] * PB[r, fb * NB + fl]
                n[0] = 0
                for fl in range(NB):
                    if sb[fl] > T.float32(0):
                        for v in T.vectorized(VL):
                            part[v] = T.float32(0)
                        if gated:
                            for v in T.vectorized(VL):
                                pu[v] = T.float32(0)
                        for kb in range(D // VL):
                            for v in T.vectorized(VL):
                                part[v] = part[v] + X[tb, kb * VL + v] * widen(W1[fb * NB + fl, kb * VL + v])
                                if gated:
                                    pu[v] = pu[v] + X[tb, kb * VL + v] * widen(WU[fb * NB + fl, kb * VL + v])
                        if gated:
                            folds([part, pu], VL)
                        else:
                            folds([part], VL)
                        h[0] = part[0] + bias(B1, fb * NB + fl)
                        IDX[fb * NB + n[0]] = fb * NB + fl
                        if gated:
                            VAL[fb * NB + n[0]] = act(h[0]) * up(pu[0])
                        else:
                            VAL[fb * NB + n[0]] = act(h[0])
                        n[0] = n[0] + 1
                CNT[fb] = n[0]
            down(Y, tb, c, IDX, VAL, CNT, LIDX, LVAL, ACC2, W2, B2)

    return with_args(kernel, spec.arg_names())
