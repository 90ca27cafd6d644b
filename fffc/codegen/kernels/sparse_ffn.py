"""``ai.fffc::SparseFFN`` mode=exact: a TVMScript (tirx) kernel generator, target-neutral.

Tokens are processed in tiles of ``mr`` (the last tile is padded: padded rows read the
last real token and are never stored, so there is no remainder code path). Two phases,
each one parallel region (or a serial loop for small shapes, where waking threads costs
more than the work):

1. **projection + compaction** (parallel over blocks of ``nb`` neurons): per token tile,
   ``h = X·W1 + B1`` with a register-tiled micro-kernel (``mr`` tokens × ``nr1`` neurons,
   vectorized over the contiguous neuron dimension of ``W1 [d_in, d_ff]``), then ReLU.
   Gated FFNs then compute the up projection ``u = X·WU[i]`` only for neurons whose gate is
   positive for some token of the tile (``mr`` dot products sharing one read of the
   contiguous row ``WU[i, :]``), and ``z = h · up_act(u)``. The neurons of the block that
   are non-zero for some token of the tile are appended to the tile's list segment
   (neuron index + ``mr`` values, contiguous for the next phase).
2. **down projection** (parallel over (column block, token tile), column-block-major so a
   thread keeps its columns of ``W2`` in cache): ``Y = B2 + Σ_list values ⊗ W2[neuron]``,
   an ``mr × nr3`` register tile — a gather-GEMM that reads only listed rows of ``W2``.

With ``mr = 1`` this is the decode kernel (exact per-token skipping); with larger ``mr``
it is a blocked GEMM that still skips rows of ``W2`` that are zero for a whole tile.
Skipped neurons cost nothing in phase 2 (nor in the up projection): the result equals the
dense computation up to float reassociation.
"""

# No ``from __future__ import annotations`` in the kernel generators: ``T.jit`` reads a
# kernel's parameter annotations (shapes and dtypes from the generator's closure) as objects.

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode
from fffc.contract.ops import UP_ACTIVATIONS

from .._tvm import T
from .pieces import activation, bias, check_weight_dtype, folds, has_zeros, widen, with_args


@dataclass(frozen=True)
class Tiling:
    """Loop tiling of one kernel variant, chosen per target family by its schedule."""

    mr: int  # tokens per tile (register rows of both micro-kernels)
    nr1: int  # neurons per projection micro-tile (divides nb)
    nb: int  # neurons per phase-1 task (divides d_ff)
    nr3: int  # output columns per down-projection micro-tile (divides d_out)
    vl: int  # lanes of the up-projection dot product (power of two, divides d_in)
    parallel: bool = True  # False: serial loops (tiny shapes, thread wake-up > work)
    packed: bool = False  # phase 1: packed panels + register micro-kernel (many tokens);
    # False: row streaming into L1 accumulators, gate-first up projection (few tokens)
    pack_w2: bool = False  # phase 2: each task packs its W2 column panel once and reuses it
    # for every token tile (many tokens, where most rows of W2 are read anyway)


def check_spec(spec: SparseSpec, dtypes: tuple[str, ...] = ("float32",)) -> None:
    """Raise CodegenError for specs this kernel family cannot compute exactly."""
    if not isinstance(spec, SparseSpec):
        raise CodegenError(f"not a SparseFFN spec: {spec}")
    if spec.mode is not SparseMode.EXACT:
        raise CodegenError(f"SparseFFN mode {str(spec.mode)!r}: only 'exact' has kernels")
    if not has_zeros(spec.activation):
        raise CodegenError(f"SparseFFN exact needs activation 'relu' (exact zeros to skip), "
                           f"got {spec.activation!r}")
    if spec.up_activation not in UP_ACTIVATIONS:
        raise CodegenError(f"SparseFFN up_activation {spec.up_activation!r} is not supported")
    if spec.up_activation != "none" and not spec.gated:
        raise CodegenError("SparseFFN up_activation needs a gated FFN (input WU)")
    if spec.dtype not in dtypes:  # weight storage: float32 (CPUs); CUDA also 16-bit
        raise CodegenError(f"SparseFFN weights: {' or '.join(dtypes)} only here, got {spec.dtype!r}")
    if min(spec.d_in, spec.d_ff, spec.d_out) < 1:
        raise CodegenError(f"SparseFFN dims must be positive, got {spec}")


def check_tiling(spec: SparseSpec, t: Tiling) -> None:
    for name, whole, part in (("nb", spec.d_ff, t.nb), ("nr1", t.nb, t.nr1),
                              ("nr3", spec.d_out, t.nr3), ("vl", spec.d_in, t.vl)):
        if part < 1 or whole % part:
            raise CodegenError(f"tiling {name}={part} does not divide {whole}")
    if t.vl & (t.vl - 1):
        raise CodegenError(f"tiling vl={t.vl} must be a power of two")


def sparse_ffn_primfunc(spec: SparseSpec, tiling: Tiling, symbol: str, dtype: str = "float32"):
    """The PrimFunc of one SparseFFN kernel variant; arguments in ``spec.arg_names()`` order,
    the weights W1, W2, WU stored as ``dtype``."""
    check_spec(spec)
    t = tiling
    check_tiling(spec, t)
    check_weight_dtype(dtype)
    D, F, DO = spec.d_in, spec.d_ff, spec.d_out
    MR, NR1, NB, NR3, VL = t.mr, t.nr1, t.nb, t.nr3, t.vl
    NFB, NFS, NCB = F // NB, NB // NR1, DO // NR3
    gated, packed, pack_w2 = spec.gated, t.packed, t.pack_w2
    loop = T.parallel if t.parallel else T.serial
    up = activation(spec.up_activation)

    @T.macro
    def micro(acc, panel, B1, X, N, tb, fb, fs):
        """The register micro-kernel of both packed projections:
        acc[mr, nr1] = B1 (None: 0) + X_tile · panel[fs]."""
        for ti in T.unroll(MR):
            for fi in T.vectorized(NR1):
                acc[ti, fi] = bias(B1, fb * NB + fs * NR1 + fi)
        for k in range(D):
            for ti in T.unroll(MR):
                for fi in T.vectorized(NR1):
                    acc[ti, fi] = acc[ti, fi] + X[T.min(tb * MR + ti, N - 1), k] * panel[fs, k, fi]

    @T.macro
    def gated_up(H, part, gz, X, WU, N, tb, fb, fl):
        """Gate first: the up projection of neuron fb·nb + fl for the tile, only if its gate
        is positive for some token; mr dot products share each read of the contiguous row
        WU[i, :]."""
        gz[0] = 0
        for ti in T.unroll(MR):
            if H[tb * MR + ti, fb * NB + fl] > T.float32(0):
                gz[0] = 1
        if gz[0] != 0:
            for ti in T.unroll(MR):
                for v in T.vectorized(VL):
                    part[ti, v] = T.float32(0)
            for kb in range(D // VL):
                for ti in T.unroll(MR):
                    for v in T.vectorized(VL):
                        part[ti, v] = part[ti, v] + X[T.min(tb * MR + ti, N - 1), kb * VL + v] * widen(WU[fb * NB + fl, kb * VL + v])
            folds([part], VL, MR)
            for ti in T.unroll(MR):
                H[tb * MR + ti, fb * NB + fl] = H[tb * MR + ti, fb * NB + fl] * up(part[ti, 0])

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F), dtype, align=4),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), dtype, align=4),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((F, D), dtype, align=4)), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        H = T.alloc_buffer(((N + MR - 1) // MR * MR, F), "float32")
        IDX = T.alloc_buffer(((N + MR - 1) // MR, F), "int32")
        VAL = T.alloc_buffer(((N + MR - 1) // MR, F, MR), "float32")
        CNT = T.alloc_buffer(((N + MR - 1) // MR, NFB), "int32")
        # Phase 1: per neuron block, per token tile: projection, (gated: up projection),
        # compaction of the block's non-zero neurons into the tile's list segment.
        for fb in loop(NFB):
            n = T.alloc_buffer((1,), "int32", scope="local")
            nz = T.alloc_buffer((1,), "int32", scope="local")
            if packed:
                # Many tokens: pack the block's W1 columns (and, gated, WU rows transposed)
                # into contiguous panels once (W1's row stride, d_ff floats, often a
                # multiple of 4 KiB, would alias in L1/L2), then a register-tiled
                # micro-kernel (mr × nr1) per tile. The up projection is dense: every
                # neuron, at GEMM speed.
                acc = T.alloc_buffer((MR, NR1), "float32", scope="local")
                pk = T.alloc_buffer((NFS, D, NR1), "float32", scope="local")
                for fs in range(NFS):
                    for k in range(D):
                        for fi in T.vectorized(NR1):
                            pk[fs, k, fi] = widen(W1[k, fb * NB + fs * NR1 + fi])
                if gated:
                    pu = T.alloc_buffer((NFS, D, NR1), "float32", scope="local")
                    for fs in range(NFS):
                        for fi in range(NR1):
                            for k in range(D):
                                pu[fs, k, fi] = widen(WU[fb * NB + fs * NR1 + fi, k])
            else:
                # Few tokens: stream whole rows of the block's W1 columns (long contiguous
                # reads the prefetcher follows) into accumulators in L1, each W1 element
                # read once per tile; gated: the up projection gate first (WU rows are read
                # only for neurons some token of the tile needs).
                hb = T.alloc_buffer((MR, NB), "float32", scope="local")
                if gated:
                    part = T.alloc_buffer((MR, VL), "float32", scope="local")
                    gz = T.alloc_buffer((1,), "int32", scope="local")
            for tb in range((N + MR - 1) // MR):
                if packed:
                    for fs in range(NFS):
                        micro(acc, pk, B1, X, N, tb, fb, fs)
                        for ti in T.unroll(MR):
                            for fi in T.vectorized(NR1):
                                H[tb * MR + ti, fb * NB + fs * NR1 + fi] = T.if_then_else(tb * MR + ti < N, T.max(acc[ti, fi], T.float32(0)), T.float32(0))
                        if gated:
                            micro(acc, pu, None, X, N, tb, fb, fs)
                            for ti in T.unroll(MR):
                                for fi in T.vectorized(NR1):
                                    H[tb * MR + ti, fb * NB + fs * NR1 + fi] = H[tb * MR + ti, fb * NB + fs * NR1 + fi] * up(acc[ti, fi])
                else:
                    for fs in range(NFS):
                        for ti in T.unroll(MR):
                            for fi in T.vectorized(NR1):
                                hb[ti, fs * NR1 + fi] = bias(B1, fb * NB + fs * NR1 + fi)
                    for k in range(D):
                        for fs in range(NFS):
                            for ti in T.unroll(MR):
                                for fi in T.vectorized(NR1):
                                    hb[ti, fs * NR1 + fi] = hb[ti, fs * NR1 + fi] + X[T.min(tb * MR + ti, N - 1), k] * widen(W1[k, fb * NB + fs * NR1 + fi])
                    for fs in range(NFS):
                        for ti in T.unroll(MR):
                            for fi in T.vectorized(NR1):
                                H[tb * MR + ti, fb * NB + fs * NR1 + fi] = T.if_then_else(tb * MR + ti < N, T.max(hb[ti, fs * NR1 + fi], T.float32(0)), T.float32(0))
                n[0] = 0
                for fl in range(NB):
                    if gated and not packed:
                        gated_up(H, part, gz, X, WU, N, tb, fb, fl)
                    nz[0] = 0
                    for ti in T.unroll(MR):
                        if H[tb * MR + ti, fb * NB + fl] != T.float32(0):
                            nz[0] = 1
                    if nz[0] != 0:
                        IDX[tb, fb * NB + n[0]] = fb * NB + fl
                        for ti in T.unroll(MR):
                            VAL[tb, fb * NB + n[0], ti] = H[tb * MR + ti, fb * NB + fl]
                        n[0] = n[0] + 1
                CNT[tb, fb] = n[0]
        if pack_w2:
            # Phase 2, many tokens: one task per column block packs that block of W2 into a
            # contiguous panel once, then runs the gather-GEMM of every token tile from it.
            for cb in loop(NCB):
                o = T.alloc_buffer((MR, NR3), "float32", scope="local")
                pw = T.alloc_buffer((F, NR3), "float32", scope="local")
                cnt = T.alloc_buffer((1,), "int32", scope="local")
                for i in range(F):
                    for j in T.vectorized(NR3):
                        pw[i, j] = widen(W2[i, cb * NR3 + j])
                for tb in range((N + MR - 1) // MR):
                    for ti in T.unroll(MR):
                        for j in T.vectorized(NR3):
                            o[ti, j] = bias(B2, cb * NR3 + j)
                    for fb in range(NFB):
                        cnt[0] = CNT[tb, fb]
                        for q in range(cnt[0]):
                            for ti in T.unroll(MR):
                                for j in T.vectorized(NR3):
                                    o[ti, j] = o[ti, j] + VAL[tb, fb * NB + q, ti] * pw[IDX[tb, fb * NB + q], j]
                    for ti in T.unroll(MR):
                        if tb * MR + ti < N:
                            for j in T.vectorized(NR3):
                                Y[tb * MR + ti, cb * NR3 + j] = o[ti, j]
        else:
            # Phase 2: gather-GEMM over each tile's lists, one (column block, tile) per
            # work item.
            for p in loop(NCB * ((N + MR - 1) // MR)):
                o = T.alloc_buffer((MR, NR3), "float32", scope="local")
                cb = p // ((N + MR - 1) // MR)
                tb = p % ((N + MR - 1) // MR)
                for ti in T.unroll(MR):
                    for j in T.vectorized(NR3):
                        o[ti, j] = bias(B2, cb * NR3 + j)
                for fb in range(NFB):
                    for q in range(CNT[tb, fb]):
                        for ti in T.unroll(MR):
                            for j in T.vectorized(NR3):
                                o[ti, j] = o[ti, j] + VAL[tb, fb * NB + q, ti] * widen(W2[IDX[tb, fb * NB + q], cb * NR3 + j])
                for ti in T.unroll(MR):
                    if tb * MR + ti < N:
                        for j in T.vectorized(NR3):
                            Y[tb * MR + ti, cb * NR3 + j] = o[ti, j]

    return with_args(kernel, spec.arg_names())
