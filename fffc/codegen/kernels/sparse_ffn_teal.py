"""``ai.fffc::SparseFFN`` mode=teal for CPUs: TEAL's thresholded FFN, computed sparsely.

The function (``passes/standard_forms.ffn`` with thresholds, ``fffc.verify.reference.teal_ffn``):
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
phases in turn; past the site's crossover artifacts run the original FFN in ONNX Runtime
instead (an ``If`` on the token count; ``--sparse-prefill``: the thresholded FFN), where
per-token skipping no longer pays.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from .decode import PARTS, ROWS, check, split_k, threshold
from .pieces import activation, bias, check_weight_dtype, with_args
from .sparse_ffn import Tiling


def teal_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, parts: int = PARTS,
                  rows: int = ROWS, dtype: str = "float32", args: list[str] | None = None):
    """The TEAL decode kernel; the weights W1, W2, WU stored as ``dtype``. Of the tiling:
    ``mr`` must be 1, ``nr1`` and ``nr3`` are the vector widths over d_ff and d_out, ``nb``
    the neurons per activation task. ``args``: the kernel's arguments where they are not
    ``spec.arg_names()`` (exact skipping: no TH, its thresholds fixed)."""
    check(spec, SparseMode.TEAL, tiling)
    t = tiling
    if spec.d_ff % t.nr1:
        raise CodegenError(f"tiling nr1={t.nr1} does not divide d_ff {spec.d_ff}")
    check_weight_dtype(dtype)
    D, F, DO, P = spec.d_in, spec.d_ff, spec.d_out, parts
    NB, NFB = t.nb, spec.d_ff // t.nb
    loop = T.parallel if t.parallel else T.serial
    gated = spec.gated
    act, up = activation(spec.activation), activation(spec.up_activation)
    gemv1, down = split_k(spec, t, parts, rows)

    def centered(x, center, i):
        return x if center is None else x - center[i]

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F), dtype, align=4),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), dtype, align=4),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((D, F), dtype, align=4)),
               TH: T.Optional(T.Buffer((2,), "float32", align=4)),
               XC: T.Optional(T.Buffer((D,), "float32", align=4)),
               HC: T.Optional(T.Buffer((F,), "float32", align=4)), y: T.handle):
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
        ACC1 = T.alloc_buffer((P, F), "float32")
        # gated: the up projection, the same split-K input-sparse GEMV on WU
        ACCU = T.alloc_buffer((P, F), "float32") if gated else T.meta_var(None)
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            c[0] = 0
            for k in range(D):
                if T.fabs(centered(X[tb, k], XC, k)) > threshold(TH, 0):
                    KIN[c[0]] = k
                    XIN[c[0]] = centered(X[tb, k], XC, k)
                    c[0] = c[0] + 1
            gemv1(ACC1, W1, ACCU, WU, lambda q: XIN[q], lambda q: KIN[q], c)
            for fb in loop(NFB):
                n = T.alloc_buffer((1,), "int32", scope="local")
                hb = T.alloc_buffer((NB,), "float32", scope="local")
                if gated:
                    ub = T.alloc_buffer((NB,), "float32", scope="local")
                for fl in T.vectorized(NB):
                    hb[fl] = bias(B1, fb * NB + fl)
                if gated:
                    for fl in T.vectorized(NB):
                        ub[fl] = T.float32(0)
                for p in range(P):
                    for fl in T.vectorized(NB):
                        hb[fl] = hb[fl] + ACC1[p, fb * NB + fl]
                if gated:
                    for p in range(P):
                        for fl in T.vectorized(NB):
                            ub[fl] = ub[fl] + ACCU[p, fb * NB + fl]
                for fl in T.vectorized(NB):
                    if gated:
                        hb[fl] = centered(act(hb[fl]) * up(ub[fl]), HC, fb * NB + fl)
                    else:
                        hb[fl] = centered(act(hb[fl]), HC, fb * NB + fl)
                n[0] = 0
                for fl in range(NB):
                    if T.fabs(hb[fl]) > threshold(TH, 1):
                        IDX[fb * NB + n[0]] = fb * NB + fl
                        VAL[fb * NB + n[0]] = hb[fl]
                        n[0] = n[0] + 1
                CNT[fb] = n[0]
            down(Y, tb, c, IDX, VAL, CNT, LIDX, LVAL, ACC2, W2, B2)

    return with_args(kernel, spec.arg_names() if args is None else args)
