"""``ai.fffc::SparseFFN`` modes teal, cats and predictor for CUDA: launches per call.

The calibrated modes drop neurons by thresholds or a predictor (``fffc.verify.reference``'s
``teal_ffn``, ``cats_ffn``, ``predictor_ffn``); like the CPU kernels they are decode
kernels, one token per block, and the artifacts run the original FFN in ONNX Runtime past
``masked_max_tokens`` (1; ``--sparse-prefill``: the masked FFN). Every grid has a token axis (extent N), so the launches are
correct for any token count. Workspace buffers (float32 per token): ``H`` (the down
projection's input), ``P`` (its split-K partials), and per mode ``G``, ``ZP``, ``SC``.

A column GEMV (``gemv``) is the building block of the first projections: a block owns
``nt`` = 32 outputs (threadIdx.x: each warp reads a 128-byte segment of one row of an
input-channel-major matrix) and splits the reduction over ``ks`` warps (threadIdx.y),
summed in shared memory in a fixed order. Where it thresholds the input, all threads of
the block read the same x (one token per block), so the branch is warp-uniform and the
row segment of a channel with ``|x| <= t_in`` is never read.

teal (W1, WU [d_in, d_ff]; TH = [t_in, t_hidden]; centered: XC [d_in], HC [d_ff]):
  1. ``proj``: gemv over W1 (and WU, gated, in the same pass) skipping small x (x - XC);
     the epilogue writes ``H = act(·+B1) [⊙ up_act(·)]`` (- HC), zeroed where
     ``|a| <= t_hidden``.
cats (gated; W1 [d_in, d_ff], WU [d_ff, d_in]; TH = [t_in, t_gate]):
  1. ``gate``: gemv over W1 skipping small x; ``G = act(·+B1)``, zeroed where
     ``|g| <= t_gate``;
  2. ``up``: a warp per neuron reads the row ``WU[i, :]`` (coalesced) only where
     ``G != 0`` (warp-uniform), dot with the thresholded x; lane 0 adds the 32 lane sums
     in order; ``H = G ⊙ up_act(·)``.
predictor (W1, WU [d_ff, d_in]; PA [d_in, r], PB [r, d_ff], PC [d_ff]):
  1. ``z``: gemv of x over PA, d_in also split over ``kb`` blocks (blockIdx.y: r alone is
     too few blocks) into partials ``ZP``;
  2. ``score``: gemv of z (the partials added in order) over PB: ``SC = z·PB + PC``;
  3. ``rows``: a warp per neuron reads its rows of W1 (and WU) only where ``SC > 0``;
     ``H = act(W1[i]·x + B1) [⊙ up_act(WU[i]·x)]``, 0 for unselected neurons.
Then, every mode: ``down`` (sparse_ffn_cuda's: split over d_ff across blocks, a row of W2
read only for a non-zero ``H``, warp-uniform) and ``reduce`` (``Y = B2 + Σ P`` in order:
deterministic, no atomics).
"""

import functools
import operator

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.contract.modes import sparse

from .._tvm import T
from .pieces import (
    WEIGHT_DTYPES,
    activation,
    ceil_div,
    check_activations,
    check_weight_dtype,
    specialize,
    widen,
)
from .sparse_ffn_cuda import CudaTiling, down_kernel, reduce_kernel


def check_masked_spec(spec: SparseSpec) -> None:
    """Raise CodegenError for specs these kernels cannot compute."""
    if not isinstance(spec, SparseSpec) or not sparse(spec.mode).masked:
        raise CodegenError(f"not a SparseFFN teal/cats/predictor spec: {spec}")
    check_activations(f"SparseFFN {spec.mode}", spec.activation, spec.up_activation)
    if spec.up_activation != "none" and not spec.gated:
        raise CodegenError("SparseFFN up_activation needs a gated FFN (input WU)")
    if spec.mode is SparseMode.CATS and not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")
    if spec.centers and (spec.mode is not SparseMode.TEAL or ("x" in spec.centers and spec.gated)):
        raise CodegenError("SparseFFN centers: mode teal only, XC for dense FFNs only")
    if spec.mode is SparseMode.PREDICTOR and spec.rank < 1:
        raise CodegenError("SparseFFN predictor: the spec carries no rank")
    if spec.dtype not in WEIGHT_DTYPES:
        raise CodegenError(f"SparseFFN weights: float32, float16 or bfloat16, got {spec.dtype!r}")
    if min(spec.d_in, spec.d_ff, spec.d_out) < 1:
        raise CodegenError(f"SparseFFN dims must be positive: {spec}")


def workspace(spec: SparseSpec, t: CudaTiling) -> dict[str, int]:
    """Scratch buffers of the variant: name → float32 elements per token (the mode's own
    first, then H and P)."""
    f = spec.d_ff
    own = {SparseMode.TEAL: {}, SparseMode.CATS: {"G": f},
           SparseMode.PREDICTOR: {"ZP": t.kb * spec.rank, "SC": f}}[spec.mode]
    return {**own, "H": f, "P": t.splits * spec.d_out}


@T.inline
def _accumulate(acc, xv, M0, M1, row, col):
    """acc[a] += x·M_a[row, col] for M0 (and M1, where given)."""
    acc[0] = acc[0] + xv[0] * widen(M0[row, col])
    if M1 is not None:
        acc[1] = acc[1] + xv[0] * widen(M1[row, col])


def _gemv(*, width: int, k: int, kb: int, ks: int, nt: int, na: int):
    """A column GEMV over a slice of K per blockIdx.y: ``acc[a] = Σ_k x[k]·M_a[k, col]``
    for the ``na`` input-channel-major matrices M0 (and M1) [k, width].

    ``gemv(N, TH, M0, M1, load_x, epilogue)`` (N: the token count; M1 given iff na == 2):
    ``load_x(xv, th, token, k)`` leaves x[k] in xv[0]; with thresholds ``TH`` = [t_in,
    t_hidden] (else None) a row segment is read only where ``|x| > t_in``;
    ``epilogue(acc, hv, th, token, bk, col)`` runs once per output, after the block's
    sums, in one thread."""
    KS = max(1, min(ks, ceil_div(ceil_div(k, kb), 4)))  # no warp without 4 rows
    KCB = ceil_div(k, kb)
    if ceil_div(k, KCB) != kb:
        raise CodegenError(f"kb={kb} leaves empty slices of {k}")
    KC = 4 * ceil_div(ceil_div(KCB, KS), 4)
    NBX, KB, NT, NA, K, W = ceil_div(width, nt), kb, nt, na, k, width

    @T.inline
    def gemv(N, TH, M0, M1, load_x, epilogue):
        for bx in T.thread_binding(NBX, thread="blockIdx.x"):
            for bk in T.thread_binding(KB, thread="blockIdx.y"):
                for bz in T.thread_binding(N, thread="blockIdx.z"):
                    for ty in T.thread_binding(KS, thread="threadIdx.y"):
                        for tx in T.thread_binding(NT, thread="threadIdx.x"):
                            acc = T.alloc_buffer((NA,), "float32", scope="local")
                            xv = T.alloc_buffer((1,), "float32", scope="local")
                            hv = T.alloc_buffer((1,), "float32", scope="local")
                            th = T.alloc_buffer((2,), "float32", scope="local")
                            red = T.alloc_buffer((NA, KS, NT), "float32", scope="shared")
                            if TH is not None:
                                th[0] = TH[0]
                                th[1] = TH[1]
                            for a in T.unroll(NA):
                                acc[a] = T.float32(0)
                            for kk in range(KC // 4):
                                for u in T.unroll(4):
                                    kidx = T.meta_var(bk * KCB + ty * KC + kk * 4 + u)
                                    col = T.meta_var(T.min(bx * NT + tx, W - 1))
                                    if ty * KC + kk * 4 + u < KCB and kidx < K:
                                        load_x(xv, th, bz, kidx)
                                        # two branches, not a Python `or`: TH is known
                                        # here, |x| only at run time (an `or` of both
                                        # would become a TIR Or)
                                        if TH is None:
                                            _accumulate(acc, xv, M0, M1, kidx, col)
                                        else:
                                            if T.fabs(xv[0]) > th[0]:  # else: the row unread
                                                _accumulate(acc, xv, M0, M1, kidx, col)
                            for a in T.unroll(NA):
                                red[a, ty, tx] = acc[a]
                            T.tvm_storage_sync("shared")
                            if ty == 0 and bx * NT + tx < W:
                                for a in T.unroll(NA):
                                    acc[a] = T.float32(0)
                                    for j in T.unroll(KS):
                                        acc[a] = acc[a] + red[a, j, tx]
                                epilogue(acc, hv, th, bz, bk, bx * NT + tx)

    return gemv


def _rows(spec: SparseSpec, t: CudaTiling, na: int):
    """A warp per neuron i: its rows of the row-per-neuron matrices M0 (and M1)
    [d_ff, d_in] dotted with x, read only where the neuron is selected (warp-uniform);
    lane 0 adds the lane sums in order.

    ``rows(N, TH, M0, M1, H, select, load_x, epilogue)`` (M1 given iff na == 2):
    ``select(sel, token, i)`` sets
    sel[0] = 1 for a selected neuron; ``load_x(xv, th, token, k)`` leaves x[k] in xv[0]
    (th[0] = TH[0] where TH is given); ``epilogue(acc, hv, token, i)`` writes H of a
    selected neuron, which is 0 otherwise."""
    NBW, WPB, NA, F, D = ceil_div(spec.d_ff, t.wpb), t.wpb, na, spec.d_ff, spec.d_in
    NK = ceil_div(spec.d_in, 128)

    @T.inline
    def rows(N, TH, M0, M1, H, select, load_x, epilogue):
        for bx in T.thread_binding(NBW, thread="blockIdx.x"):
            for by in T.thread_binding(N, thread="blockIdx.y"):
                for ty in T.thread_binding(WPB, thread="threadIdx.y"):
                    for tx in T.thread_binding(32, thread="threadIdx.x"):
                        acc = T.alloc_buffer((NA,), "float32", scope="local")
                        xv = T.alloc_buffer((1,), "float32", scope="local")
                        hv = T.alloc_buffer((1,), "float32", scope="local")
                        th = T.alloc_buffer((1,), "float32", scope="local")
                        sel = T.alloc_buffer((1,), "int32", scope="local")
                        red = T.alloc_buffer((NA, WPB, 32), "float32", scope="shared")
                        if TH is not None:
                            th[0] = TH[0]
                        for a in T.unroll(NA):
                            acc[a] = T.float32(0)
                        sel[0] = 0
                        if bx * WPB + ty < F:
                            select(sel, by, bx * WPB + ty)
                        if sel[0] != 0:
                            for kk in range(NK):
                                for u in T.unroll(4):
                                    kidx = T.meta_var((kk * 4 + u) * 32 + tx)
                                    if kidx < D:
                                        load_x(xv, th, by, kidx)
                                        _accumulate(acc, xv, M0, M1, bx * WPB + ty, kidx)
                        for a in T.unroll(NA):
                            red[a, ty, tx] = acc[a]
                        T.tvm_storage_sync("shared")
                        if tx == 0 and bx * WPB + ty < F:
                            H[by, bx * WPB + ty] = T.float32(0)
                            if sel[0] != 0:
                                for a in T.unroll(NA):
                                    acc[a] = T.float32(0)
                                    for j in range(32):
                                        acc[a] = acc[a] + red[a, ty, j]
                                epilogue(acc, hv, by, bx * WPB + ty)

    return rows


def _activate(spec: SparseSpec):
    """``activate(hv, pre, up)``: hv[0] = act(pre) [⊙ up_act(up), gated]."""
    act, up_act = activation(spec.activation), activation(spec.up_activation)

    @T.inline
    def activate(hv, pre, up):
        hv[0] = pre
        hv[0] = act(hv[0])
        if up is not None:
            hv[0] = hv[0] * up_act(up)

    return activate


def teal_proj(spec: SparseSpec, t: CudaTiling, symbol: str, weight_dtype: str):
    """gemv over W1 (and WU, gated, in the same pass) skipping small x (x - XC); H =
    act(·+B1) [⊙ up_act(·)] (- HC), zeroed where ``|a| <= t_hidden``. The centers' share
    of the outputs is folded into B1 and B2."""
    D, F, WDT = spec.d_in, spec.d_ff, weight_dtype
    gemv = _gemv(width=F, k=D, kb=1, ks=t.ks, nt=t.nt, na=2 if spec.gated else 1)
    activate = _activate(spec)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F), WDT),
               B1: T.Optional(T.Buffer((F,), "float32")),
               WU: T.Optional(T.Buffer((D, F), WDT)), TH: T.Buffer((2,), "float32"),
               XC: T.Optional(T.Buffer((D,), "float32")),
               HC: T.Optional(T.Buffer((F,), "float32")), h: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        H = T.match_buffer(h, (N, F), "float32")

        @T.inline
        def load_x(xv, th, bz, k):
            xv[0] = X[bz, k] - XC[k] if XC is not None else X[bz, k]

        @T.inline
        def epilogue(acc, hv, th, bz, bk, col):
            activate(hv, acc[0] + B1[col] if B1 is not None else acc[0],
                     acc[1] if WU is not None else None)
            if HC is not None:
                hv[0] = hv[0] - HC[col]
            H[bz, col] = T.if_then_else(T.fabs(hv[0]) > th[1], hv[0], T.float32(0))

        gemv(N, TH, W1, WU, load_x, epilogue)

    return specialize(kernel, B1=spec.has_b1, WU=spec.gated, XC="x" in spec.centers,
                      HC="h" in spec.centers)


def cats_gate(spec: SparseSpec, t: CudaTiling, symbol: str, weight_dtype: str):
    """gemv over W1 skipping small x; ``G = act(·+B1)``, zeroed where ``|g| <= t_gate``."""
    D, F, WDT = spec.d_in, spec.d_ff, weight_dtype
    gemv = _gemv(width=F, k=D, kb=1, ks=t.ks, nt=t.nt, na=1)
    activate = _activate(spec)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F), WDT),
               B1: T.Optional(T.Buffer((F,), "float32")), TH: T.Buffer((2,), "float32"),
               g: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        G = T.match_buffer(g, (N, F), "float32")

        @T.inline
        def load_x(xv, th, bz, k):
            xv[0] = X[bz, k]

        @T.inline
        def epilogue(acc, hv, th, bz, bk, col):
            activate(hv, acc[0] + B1[col] if B1 is not None else acc[0], None)
            G[bz, col] = T.if_then_else(T.fabs(hv[0]) > th[1], hv[0], T.float32(0))

        gemv(N, TH, W1, None, load_x, epilogue)

    return specialize(kernel, B1=spec.has_b1)


def cats_up(spec: SparseSpec, t: CudaTiling, symbol: str, weight_dtype: str):
    """A warp per neuron reads ``WU[i, :]`` only where ``G != 0``, dot with the thresholded
    x; ``H = G ⊙ up_act(·)``."""
    D, F, WDT = spec.d_in, spec.d_ff, weight_dtype
    rows = _rows(spec, t, na=1)
    up_act = activation(spec.up_activation)

    @T.prim_func
    def kernel(x: T.handle, WU: T.Buffer((F, D), WDT), TH: T.Buffer((2,), "float32"),
               g: T.handle, h: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        G = T.match_buffer(g, (N, F), "float32")
        H = T.match_buffer(h, (N, F), "float32")

        @T.inline
        def select(sel, by, i):
            if G[by, i] != T.float32(0):
                sel[0] = 1

        @T.inline
        def load_x(xv, th, by, k):
            xv[0] = T.if_then_else(T.fabs(X[by, k]) > th[0], X[by, k], T.float32(0))

        @T.inline
        def epilogue(acc, hv, by, i):
            H[by, i] = G[by, i] * up_act(acc[0])

        rows(N, TH, WU, None, H, select, load_x, epilogue)

    return kernel


def predictor_z(spec: SparseSpec, t: CudaTiling, symbol: str):
    """gemv of x over PA, d_in also split over ``kb`` blocks into the partials ``ZP``."""
    D, R, KB = spec.d_in, spec.rank, t.kb
    gemv = _gemv(width=R, k=D, kb=KB, ks=t.ks, nt=t.nt, na=1)

    @T.prim_func
    def kernel(x: T.handle, PA: T.Buffer((D, R), "float32"), zp: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        ZP = T.match_buffer(zp, (N, KB, R), "float32")

        @T.inline
        def load_x(xv, th, bz, k):
            xv[0] = X[bz, k]

        @T.inline
        def epilogue(acc, hv, th, bz, bk, col):
            ZP[bz, bk, col] = acc[0]

        gemv(N, None, PA, None, load_x, epilogue)

    return kernel


def predictor_score(spec: SparseSpec, t: CudaTiling, symbol: str):
    """gemv of z (its partials added in order) over PB: ``SC = z·PB + PC``."""
    F, R, KB = spec.d_ff, spec.rank, t.kb
    gemv = _gemv(width=F, k=R, kb=1, ks=t.ks, nt=t.nt, na=1)

    def z(ZP, bz, k):
        return functools.reduce(operator.add, [ZP[bz, j, k] for j in range(KB)])

    @T.prim_func
    def kernel(zp: T.handle, PB: T.Buffer((R, F), "float32"), PC: T.Buffer((F,), "float32"),
               sc: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        ZP = T.match_buffer(zp, (N, KB, R), "float32")
        SC = T.match_buffer(sc, (N, F), "float32")

        @T.inline
        def load_x(xv, th, bz, k):
            xv[0] = z(ZP, bz, k)

        @T.inline
        def epilogue(acc, hv, th, bz, bk, col):
            SC[bz, col] = acc[0] + PC[col]

        gemv(N, None, PB, None, load_x, epilogue)

    return kernel


def predictor_rows(spec: SparseSpec, t: CudaTiling, symbol: str, weight_dtype: str):
    """A warp per neuron reads its rows of W1 (and WU) only where ``SC > 0``;
    ``H = act(W1[i]·x + B1) [⊙ up_act(WU[i]·x)]``, 0 for unselected neurons."""
    D, F, WDT = spec.d_in, spec.d_ff, weight_dtype
    rows = _rows(spec, t, na=2 if spec.gated else 1)
    activate = _activate(spec)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, D), WDT),
               B1: T.Optional(T.Buffer((F,), "float32")),
               WU: T.Optional(T.Buffer((F, D), WDT)), sc: T.handle, h: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        SC = T.match_buffer(sc, (N, F), "float32")
        H = T.match_buffer(h, (N, F), "float32")

        @T.inline
        def select(sel, by, i):
            if SC[by, i] > T.float32(0):
                sel[0] = 1

        @T.inline
        def load_x(xv, th, by, k):
            xv[0] = X[by, k]

        @T.inline
        def epilogue(acc, hv, by, i):
            activate(hv, acc[0] + B1[i] if B1 is not None else acc[0],
                     acc[1] if WU is not None else None)
            H[by, i] = hv[0]

        rows(N, None, W1, WU, H, select, load_x, epilogue)

    return specialize(kernel, B1=spec.has_b1, WU=spec.gated)


def decode_funcs(spec: SparseSpec, t: CudaTiling, prefix: str, weight_dtype: str) -> dict:
    """PrimFuncs of the variant's kernels, by global symbol, in launch order."""
    check_masked_spec(spec)
    check_weight_dtype(weight_dtype)
    if t.mr != 1 or t.gemm:
        raise CodegenError(f"SparseFFN {spec.mode} on CUDA: one token per block (mr=1)")
    wdt = weight_dtype
    out = {name: make(spec, t, f"{prefix}_{name}", wdt)
           for name, make in _FIRST_LAUNCHES[spec.mode].items()}
    out["down"] = down_kernel(spec, t, f"{prefix}_down", wdt, from_h=True)
    out["reduce"] = reduce_kernel(spec, t, f"{prefix}_reduce")
    return {f"{prefix}_{name}": f for name, f in out.items()}


# The mode's launches before the shared down projection, in launch order (the predictor's
# z and score kernels read no weight matrix: their dtype argument is unused).
_FIRST_LAUNCHES = {
    SparseMode.TEAL: {"proj": teal_proj},
    SparseMode.CATS: {"gate": cats_gate, "up": cats_up},
    SparseMode.PREDICTOR: {"z": lambda spec, t, symbol, wdt: predictor_z(spec, t, symbol),
                           "score": lambda spec, t, symbol, wdt: predictor_score(spec, t, symbol),
                           "rows": predictor_rows},
}
