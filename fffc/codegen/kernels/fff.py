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

from __future__ import annotations

from fffc.ops import KernelSpec

from .._tvm import from_source
from ..schedules.base import largest_divisor
from .fff_cuda import fff_params, fff_right

# Signature and token-major X, Y of both CPU kernels.
_HEAD = '''
@T.prim_func
def kernel(x: T.handle, W_in: T.Buffer(({R}, {D}), "float32", align=4),
           B_in: T.Buffer(({R},), "float32", align=4), W_out: T.Buffer(({R}, {DO}), "float32", align=4),
           y: T.handle):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
    X = T.match_buffer(x, (N, {D}), "float32", align=4)
    Y = T.match_buffer(y, (N, {DO}), "float32", align=4)
'''

# One node of one token: dot with W_in's row, + bias, exact GELU, axpy of W_out's row into
# Y, branch. Indented for the innermost loop of both kernels; {NODE} holds the node index.
_STEP = '''                        for v in T.vectorized({VL}):
                            part[v] = T.float32(0)
                        for kb in range({D} // {VL}):
                            for v in T.vectorized({VL}):
                                part[v] = part[v] + X[c * {TC} + tt, kb * {VL} + v] * W_in[k * {NN} + {NODE}, kb * {VL} + v]
                        h[0] = B_in[k * {NN} + {NODE}]
                        for v in range({VL}):
                            h[0] = h[0] + part[v]
                        g[0] = T.float32(0.5) * h[0] * (T.float32(1) + T.erf(h[0] * T.float32(0.7071067811865476)))
                        for jb in range({DO} // {VLO}):
                            for v in T.vectorized({VLO}):
                                Y[c * {TC} + tt, jb * {VLO} + v] = Y[c * {TC} + tt, jb * {VLO} + v] + g[0] * W_out[k * {NN} + {NODE}, jb * {VLO} + v]
                        {NODE} = {NODE} * 2 + 1 + T.Select(h[0] {GT} T.float32(0), 1, 0)
'''

_FFF = _HEAD + '''    for c in {loop}((N + {TC} - 1) // {TC}):
        part = T.alloc_buffer(({VL},), "float32", scope="local")
        node = T.alloc_buffer((1,), "int32", scope="local")
        h = T.alloc_buffer((1,), "float32", scope="local")
        g = T.alloc_buffer((1,), "float32", scope="local")
        for tt in range({TC}):
            if c * {TC} + tt < N:
                for jb in range({DO} // {VLO}):
                    for v in T.vectorized({VLO}):
                        Y[c * {TC} + tt, jb * {VLO} + v] = T.float32(0)
                for k in range({K}):
                    node[0] = 0
                    for lvl in range({LEVELS}):
''' + _STEP


_LEVEL = _HEAD + '''    for c in T.parallel((N + {TC} - 1) // {TC}):
        part = T.alloc_buffer(({VL},), "float32", scope="local")
        node = T.alloc_buffer(({TC},), "int32", scope="local")
        h = T.alloc_buffer((1,), "float32", scope="local")
        g = T.alloc_buffer((1,), "float32", scope="local")
        for tt in range({TC}):
            if c * {TC} + tt < N:
                for jb in range({DO} // {VLO}):
                    for v in T.vectorized({VLO}):
                        Y[c * {TC} + tt, jb * {VLO} + v] = T.float32(0)
        for k in range({K}):
            for tt in range({TC}):
                node[tt] = 0
            for lvl in range({LEVELS}):
                for tt in range({TC}):
                    if c * {TC} + tt < N:
''' + _STEP


def _fields(spec: KernelSpec, symbol: str, lanes: int, tokens_per_task: int) -> dict:
    """The template fields both CPU kernels share."""
    trees, depth = fff_params(spec)
    return {"R": spec.d_ff, "D": spec.d_in, "DO": spec.d_out, "K": trees,
            "NN": spec.d_ff // trees, "LEVELS": depth + 1, "TC": tokens_per_task,
            "GT": fff_right(spec), "VL": largest_divisor(spec.d_in, lanes),
            "VLO": largest_divisor(spec.d_out, lanes), "symbol": symbol}


def fff_cpu_source(spec: KernelSpec, symbol: str, lanes: int = 16, tokens_per_task: int = 2,
                   parallel: bool = True) -> str:
    """TVMScript of the CPU FFF kernel for one shape (serial: a few tokens, where waking
    threads costs more than the walk)."""
    return _FFF.format(**_fields(spec, symbol, lanes, tokens_per_task), NODE="node[0]",
                       loop="T.parallel" if parallel else "range")


def fff_cpu_primfunc(spec: KernelSpec, symbol: str, lanes: int = 16, parallel: bool = True):
    return from_source(fff_cpu_source(spec, symbol, lanes, parallel=parallel))


def fff_level_source(spec: KernelSpec, symbol: str, block: int = 16, lanes: int = 16) -> str:
    """TVMScript of the level-synchronous CPU FFF kernel (blocks of ``block`` tokens)."""
    return _LEVEL.format(**_fields(spec, symbol, lanes, block), NODE="node[tt]")


def fff_level_primfunc(spec: KernelSpec, symbol: str, block: int = 16, lanes: int = 16):
    return from_source(fff_level_source(spec, symbol, block, lanes))
