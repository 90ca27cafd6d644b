"""``ai.fffc::FastFeedForward`` for CPUs (x86, aarch64): the conditional walk, per token.

Tokens are split into tasks of ``tc`` (one parallel region); per token and tree, D+1
levels of: a vectorized dot product of x with the node's row of ``W_in`` (``vl``
independent lanes, summed at the end), exact GELU, an axpy of the node's row of
``W_out`` into Y, and the branch ``j = 2j + 1 + [z > 0]``. Only K·(D+1) rows of each
weight are read per token.

The level-synchronous form (``fff_level_primfunc``, many tokens) does the same work in
another order: a block of ``tc`` tokens walks one tree together, a level at a time (the
block's node indices live in a small array). The block's tokens share the tree's upper
nodes while those rows are in cache, and the block's row fetches of a level are
independent, so their latencies overlap instead of forming one chain per token
(bench/bench_fff_variants.py measures both orders).
"""

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import FffSpec

from .._tvm import T
from .pieces import activation, largest_divisor


@dataclass(frozen=True)
class WalkTiling:
    """One CPU FFF variant: ``lanes`` of the row dot products and axpys, ``tokens`` per
    task, in parallel or serially; ``level``: the level-synchronous order."""

    lanes: int = 16
    tokens: int = 2
    parallel: bool = True
    level: bool = False


def _kernel(spec: FffSpec, symbol: str, lanes: int, tokens_per_task: int, parallel: bool,
            level: bool):
    """One CPU FFF kernel: token by token (``level`` False: each token walks every tree)
    or level-synchronous (a task's tokens walk one tree together, a level at a time)."""
    if not isinstance(spec, FffSpec):
        raise CodegenError(f"not a FastFeedForward spec: {spec}")
    K, depth = spec.trees, spec.depth
    R, D, DO, NN, LEVELS = spec.d_ff, spec.d_in, spec.d_out, spec.nodes, depth + 1
    TC = tokens_per_task
    VL, VLO = largest_divisor(D, lanes), largest_divisor(DO, lanes)
    GE, loop = spec.right_on_tie, T.parallel if parallel else T.serial
    gelu = activation("gelu")

    @T.inline
    def clear(Y, row):
        for jb in range(DO // VLO):
            for v in T.vectorized(VLO):
                Y[row, jb * VLO + v] = T.float32(0)

    @T.inline
    def step(X, W_in, B_in, W_out, Y, part, h, g, node, c, tt, k, n):
        """One node of token c·TC + tt in tree k (its index in node[n]): dot with W_in's
        row, + bias, exact GELU, axpy of W_out's row into Y, branch."""
        for v in T.vectorized(VL):
            part[v] = T.float32(0)
        for kb in range(D // VL):
            for v in T.vectorized(VL):
                part[v] = part[v] + X[c * TC + tt, kb * VL + v] * W_in[k * NN + node[n], kb * VL + v]
        h[0] = B_in[k * NN + node[n]]
        for v in range(VL):
            h[0] = h[0] + part[v]
        g[0] = gelu(h[0])
        for jb in range(DO // VLO):
            for v in T.vectorized(VLO):
                Y[c * TC + tt, jb * VLO + v] = Y[c * TC + tt, jb * VLO + v] + g[0] * W_out[k * NN + node[n], jb * VLO + v]
        right = T.meta_var(h[0] >= T.float32(0) if GE else h[0] > T.float32(0))
        node[n] = node[n] * 2 + 1 + T.Select(right, 1, 0)

    @T.prim_func
    def kernel(x: T.handle, W_in: T.Buffer((R, D), "float32", align=4),
               B_in: T.Buffer((R,), "float32", align=4),
               W_out: T.Buffer((R, DO), "float32", align=4), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        for c in loop((N + TC - 1) // TC):
            part = T.alloc_buffer((VL,), "float32", scope="local")
            node = T.alloc_buffer((TC if level else 1,), "int32", scope="local")
            h = T.alloc_buffer((1,), "float32", scope="local")
            g = T.alloc_buffer((1,), "float32", scope="local")
            if level:
                for tt in range(TC):
                    if c * TC + tt < N:
                        clear(Y, c * TC + tt)
                for k in range(K):
                    for tt in range(TC):
                        node[tt] = 0
                    for lvl in range(LEVELS):  # noqa: B007 (a TIR loop: one pass per level)
                        for tt in range(TC):
                            if c * TC + tt < N:
                                step(X, W_in, B_in, W_out, Y, part, h, g, node, c, tt, k, tt)
            else:
                for tt in range(TC):
                    if c * TC + tt < N:
                        clear(Y, c * TC + tt)
                        for k in range(K):
                            node[0] = 0
                            for lvl in range(LEVELS):  # noqa: B007 (a TIR loop: one pass per level)
                                step(X, W_in, B_in, W_out, Y, part, h, g, node, c, tt, k, 0)

    return kernel


def walk_primfunc(spec: FffSpec, tiling: WalkTiling, symbol: str):
    """The CPU FFF kernel of one variant's tiling."""
    return _kernel(spec, symbol, tiling.lanes, tiling.tokens, tiling.parallel, tiling.level)


def fff_cpu_primfunc(spec: FffSpec, symbol: str, lanes: int = 16, parallel: bool = True,
                     tokens_per_task: int = 2):
    """The token-by-token CPU FFF kernel for one shape (serial: a few tokens, where waking
    threads costs more than the walk)."""
    return _kernel(spec, symbol, lanes, tokens_per_task, parallel, level=False)


def fff_level_primfunc(spec: FffSpec, symbol: str, block: int = 16, lanes: int = 16):
    """The level-synchronous CPU FFF kernel (blocks of ``block`` tokens, in parallel)."""
    return _kernel(spec, symbol, lanes, block, parallel=True, level=True)
