"""``ai.fffc::FastFeedForward`` for CUDA: one thread block per token walks every tree.

The token's row of X stays in registers (``per`` values per thread, coalesced with the
node rows of ``W_in``). With ``prefetch``, the rows of both children are loaded while a
level reduces, so the next level starts from registers (twice the row reads, the load
latency off the chain of D+1 dependent levels). Per level: a block-wide dot product (per-thread partials, then a
shared-memory tree reduction), exact GELU, an axpy of the node's row of ``W_out`` into the
per-thread output registers, and the branch ``j = 2j + 1 + [z > 0]``. Only the D+1 visited
rows of ``W_in`` and ``W_out`` are read per tree: the conditional matrix multiplication.
"""

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FffSpec

from .._tvm import T
from .pieces import activation, ceil_div, check_weight_dtype, widen


@dataclass(frozen=True)
class FffTiling:
    threads: int = 128  # per block (power of two, ≥ 32)
    prefetch: bool = False  # load both children's rows during a level (2x row reads)


def fff_kernel(spec: FffSpec, t: FffTiling, symbol: str, weight_dtype: str):
    """The FFF kernel for one shape, its ``W_in`` and ``W_out`` stored as ``weight_dtype``."""
    if not isinstance(spec, FffSpec):
        raise CodegenError(f"not a FastFeedForward spec: {spec}")
    K, depth = spec.trees, spec.depth
    check_weight_dtype(weight_dtype)
    TX = t.threads
    if TX < 32 or TX & (TX - 1):
        raise CodegenError(f"FFF threads {TX}: a power of two ≥ 32")
    R, D, DO, NN, DEPTH, LEVELS = spec.d_ff, spec.d_in, spec.d_out, spec.nodes, depth, depth + 1
    PER, PERO, NW = ceil_div(D, TX), ceil_div(DO, TX), TX // 32
    PREFETCH, GE, WDT = t.prefetch, spec.right_on_tie, weight_dtype
    gelu = activation("gelu")

    @T.inline
    def load_row(dst, W_in, row, tx):
        """Thread tx's values of W_in's row (PER, strided by TX), 0 past d_in."""
        for i in T.unroll(PER):
            dst[i] = T.if_then_else(i * TX + tx < D, widen(W_in[row, T.min(i * TX + tx, D - 1)]), T.float32(0))

    @T.prim_func
    def kernel(x: T.handle, W_in: T.Buffer((R, D), WDT), B_in: T.Buffer((R,), "float32"),
               W_out: T.Buffer((R, DO), WDT), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        Y = T.match_buffer(y, (N, DO), "float32")
        for b in T.thread_binding(N, thread="blockIdx.x"):
            for tx in T.thread_binding(TX, thread="threadIdx.x"):
                xr = T.alloc_buffer((PER,), "float32", scope="local")
                yr = T.alloc_buffer((PERO,), "float32", scope="local")
                node = T.alloc_buffer((1,), "int32", scope="local")
                part = T.alloc_buffer((1,), "float32", scope="local")
                h = T.alloc_buffer((1,), "float32", scope="local")
                pg = T.alloc_buffer((1,), "float32", scope="local")
                pnode = T.alloc_buffer((1,), "int32", scope="local")
                red = T.alloc_buffer((2, NW), "float32", scope="shared")
                cw = T.alloc_buffer((PER,), "float32", scope="local")
                lw = T.alloc_buffer((PER,), "float32", scope="local")
                rw = T.alloc_buffer((PER,), "float32", scope="local")
                for i in T.unroll(PER):
                    xr[i] = T.if_then_else(i * TX + tx < D, X[b, T.min(i * TX + tx, D - 1)], T.float32(0))
                for i in T.unroll(PERO):
                    yr[i] = T.float32(0)
                for k in range(K):
                    node[0] = 0
                    if PREFETCH:  # the root's row
                        load_row(cw, W_in, k * NN, tx)
                    pg[0] = T.float32(0)
                    pnode[0] = 0
                    for lvl in range(LEVELS):
                        if PREFETCH:
                            # the children's rows are known now: loading both overlaps their
                            # latency with this level's reduction
                            if lvl < DEPTH:
                                for i in T.unroll(PER):
                                    lw[i] = T.if_then_else(i * TX + tx < D, widen(W_in[k * NN + node[0] * 2 + 1, T.min(i * TX + tx, D - 1)]), T.float32(0))
                                    rw[i] = T.if_then_else(i * TX + tx < D, widen(W_in[k * NN + node[0] * 2 + 2, T.min(i * TX + tx, D - 1)]), T.float32(0))
                        else:  # the current node's row, loaded once the node is known
                            load_row(cw, W_in, k * NN + node[0], tx)
                        # the previous level's axpy, deferred so that its W_out row load is in
                        # flight together with this level's W_in row instead of after it
                        if lvl > 0:
                            for i in T.unroll(PERO):
                                if i * TX + tx < DO:
                                    yr[i] = yr[i] + pg[0] * widen(W_out[k * NN + pnode[0], i * TX + tx])
                        part[0] = T.float32(0)
                        for i in T.unroll(PER):
                            part[0] = part[0] + xr[i] * cw[i]
                        # warp sums by shuffles, then one barrier for the warps' partial sums
                        # (double-buffered by level parity: no second barrier before reuse)
                        for s in T.unroll(5):
                            part[0] = part[0] + T.tvm_warp_shuffle_xor(T.uint32(4294967295), part[0], T.shift_left(1, s), 32, 32)
                        if tx % 32 == 0:
                            red[lvl % 2, tx // 32] = part[0]
                        T.tvm_storage_sync("shared")
                        h[0] = B_in[k * NN + node[0]]
                        for w in T.unroll(NW):
                            h[0] = h[0] + red[lvl % 2, w]
                        pg[0] = gelu(h[0])
                        pnode[0] = node[0]
                        right = T.meta_var(h[0] >= T.float32(0) if GE else h[0] > T.float32(0))
                        node[0] = node[0] * 2 + 1 + T.Select(right, 1, 0)
                        if PREFETCH:
                            for i in T.unroll(PER):
                                cw[i] = T.Select(right, rw[i], lw[i])
                    for i in T.unroll(PERO):
                        if i * TX + tx < DO:
                            yr[i] = yr[i] + pg[0] * widen(W_out[k * NN + pnode[0], i * TX + tx])
                for i in T.unroll(PERO):
                    if i * TX + tx < DO:
                        Y[b, i * TX + tx] = yr[i]

    return kernel
