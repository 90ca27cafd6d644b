"""``ai.fffc::StructuredFFN`` for CUDA: one launch per GEMM stage, over workspace buffers.

The op is the chain of stages of kernels/structured_ffn.py (``_stages``): per projection
the block-diagonal factor A (k blocks of p inputs and q outputs, indexed in place: no
transposed copies), BlockShuffle's S (m blocks reading the strided inputs h[j·m + b] and
writing the strided outputs out[t·m + b]) and the dense factor U where present; a
projection's last stage carries its bias (the first projection's also the activation, in
its plain form: erff/tanhf/expf are cheap on a GPU). A GPU kernel
cannot allocate its scratch, so stage i reads the previous stage's output from a workspace
buffer the shim allocates (float32, per token): ``H<i>`` [N, w] (finished values) or
``P<i>`` [N, kb, w] (split-K partial sums). Launches of one variant, in order:

**gemv** (few tokens, ``mr`` per block): per stage ``s<i>``, grid (token tiles, column
tiles, kb), block (nt, ks). A block owns ``nt`` output columns of one block of the stage
(threadIdx.x: a warp reads a contiguous 128-byte segment of each weight row, the weights
being [.., q]-contiguous), ``mr`` tokens that share every weight load, and 1/kb of the
reduction (blockIdx.z: split-K over the grid, so that narrow stages still fill the GPU);
the block stages its tokens' inputs in shared memory chunk by chunk (coalesced along the
input row), splits each chunk over ``ks`` warp rows (threadIdx.y) and sums the ks partial
results in shared memory in a fixed order. With kb = 1 the stage finishes its values
(+bias, activation) into ``H<i+1>`` or Y; with kb > 1 it writes the partials ``P<i+1>``
and the *next* stage sums them (+bias, activation) while it stages its inputs: split-K
costs no extra launch, except after the last stage, where ``reduce`` (Y = B2 + Σ P, a
thread per output) follows. Deterministic: fixed summation orders, no atomics.

**tile** (many tokens): per stage ``s<i>`` a shared-memory tiled GEMM with the fused
epilogue: a block computes bm tokens × bn columns of one block of the stage (grid: token
tiles, k · column tiles), tm × tn outputs per thread at rows ty + i·(bm/tm) and columns
tx + j·(bn/tn) (conflict-free shared reads, coalesced stores), bk inputs per step: the
input tile is stored [bm, bk + 1] (padded: no bank conflicts on the transposing reads;
1-D, or TVM would compact the padding away),
the weight tile [bk, bn] (coalesced rows). With ``tile_split`` (the variant for fewer
tokens: one or two token tiles) the stages split K over blockIdx.z as gemv's do, with the
same partial-sum buffers, consumers and reduce.

Ragged edges (tokens, columns, reductions no tile divides) are guarded; nothing is read
outside its buffer. **Counted** variants (``counted_``: a RoutedFFN's FFN on its gathered
rows) take the int32 buffer ``CNT`` [1]: the grid still spans N (the capacity), blocks
whose token rows all lie at or past ``CNT[0]`` exit at once, and rows ≥ ``CNT[0]`` of X,
the workspace and Y are neither read nor written.

Each launch is a Python function that defines its ``@T.prim_func`` (closure: the stage, its
split and the tiling) and returns the PrimFunc; the parameters depend on the stage (its
source, weight, biases, destination), so the body declares them. The
weight dtype is a parameter of the generators: 16-bit weights (float16, bfloat16) are
declared as such and widened to float32 where they are loaded, so arithmetic and
accumulation stay float32 and the weights cost half the memory traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import StructuredSpec

from .._tvm import T, macro, named
from .pieces import WEIGHT_DTYPES, activation, ceil_div, widen
from .structured_ffn import _Stage, _stages, _sum, _weight_shapes, check_spec

MAX_GRID_YZ = 65535  # CUDA's limit of gridDim.y and gridDim.z (token tiles go on x)


@dataclass(frozen=True)
class StructuredTiling:
    """Launch shape of one CUDA StructuredFFN variant (schedules/cuda.py picks the values)."""

    tile: bool = False  # many tokens: tiled GEMM stages; else the gemv stages
    counted: bool = False  # rows ≥ CNT[0] are neither read nor written
    # gemv
    mr: int = 1  # tokens per block
    nt: int = 32  # output columns per block at most (threadIdx.x)
    threads: int = 256  # per block: nt × ks
    stage_floats: int = 4096  # tokens × inputs staged in shared memory per chunk
    target_blocks: int = 528  # split-K until a stage has about this many blocks
    min_k_slice: int = 64  # inputs per split at least
    max_splits: int = 16  # partial sums per output at most (their consumer adds them)
    # tile
    bm: int = 64  # tokens per block
    bn: int = 64  # columns per block at most
    bk: int = 16  # inputs per shared-memory step
    tm: int = 4  # tokens per thread
    tn: int = 4  # columns per thread
    tile_split: bool = False  # split-K like gemv (few token tiles: narrow stages would
    # otherwise run on a handful of blocks)


@dataclass(frozen=True)
class _Launch:
    """One stage of a variant: where it reads, how it splits, where it writes."""

    st: _Stage
    src: str  # "X", "H<i>" (finished) or "P<i>" (partials of the previous stage)
    src_kb: int  # partials to sum when reading src (0: src holds finished values)
    src_stage: _Stage | None  # the producer of src (its bias and activation: partials)
    dst: str  # "Y", "H<i+1>" or "P<i+1>"
    kb: int  # split-K blocks
    width_out: int  # columns of dst (per split)


def _width(st: _Stage) -> int:
    return st.k * st.q


def _plan(spec: StructuredSpec, t: StructuredTiling) -> list[_Launch]:
    """The stages of a variant with their buffers and splits (tile: never split)."""
    stages = _stages(spec)
    out: list[_Launch] = []
    src, src_kb, prev = "X", 0, None
    for i, st in enumerate(stages):
        kb = _split(st, t)[0]
        last = i == len(stages) - 1
        dst = ("Y" if last else f"H{i + 1}") if kb == 1 else f"P{i + 1}"
        out.append(_Launch(st, src, src_kb, prev, dst, kb, _width(st)))
        src, src_kb, prev = dst, (kb if kb > 1 else 0), st
    return out


def workspace(spec: StructuredSpec, t: StructuredTiling) -> dict[str, int]:
    """Scratch buffers of a variant: name → float32 elements per token."""
    check_spec(spec, WEIGHT_DTYPES)
    return {ln.dst: ln.kb * ln.width_out for ln in _plan(spec, t) if ln.dst != "Y"}


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _columns(st: _Stage, t: StructuredTiling) -> int:
    """Output columns per block: gemv ``nt`` (whole warps), tile ``bn`` (narrower tiles
    for narrow blocks of the stage)."""
    if t.tile:
        return min(t.bn, max(4 * t.tn, _pow2_at_least(st.q)))
    return min(t.nt, 32 * ceil_div(st.q, 32))


def _split(st: _Stage, t: StructuredTiling) -> tuple[int, int]:
    """(kb, ps): split-K blocks (blockIdx.z) and inputs per split, so that a stage has
    about ``target_blocks`` blocks for one token tile (tile: ps a multiple of bk)."""
    if t.tile and not t.tile_split:
        return 1, st.p
    tiles = st.k * ceil_div(st.q, _columns(st, t))
    kb = max(1, min(ceil_div(t.target_blocks, tiles), st.p // t.min_k_slice, t.max_splits))
    unit = t.bk if t.tile else 1
    ps = ceil_div(ceil_div(st.p, kb), unit) * unit
    return ceil_div(st.p, ps), ps  # no empty split


def _gemv_shape(st: _Stage, t: StructuredTiling) -> tuple[int, int, int, int, int]:
    """(nt, ks, kb, ps, kch): columns and warp rows per block, split-K blocks, inputs per
    split, inputs staged per chunk (a multiple of ks)."""
    nt = _columns(st, t)
    ks = max(1, t.threads // nt)
    kb, ps = _split(st, t)
    kch = min(max(ks, t.stage_floats // t.mr // ks * ks), ceil_div(ps, ks) * ks)
    return nt, ks, kb, ps, kch


# --- pieces shared by the launches ---

def _all(*conds):
    """``c0 and c1 and ...`` as TVMScript builds it: And nodes, left to right."""
    out = conds[0]
    for c in conds[1:]:
        out = T.And(out, c)
    return out


def _row_conds(row, N, bufs: dict, counted: bool) -> list:
    """Conditions for token row ``row`` to be read or written (counted: below CNT[0] too)."""
    return [row < N, row < bufs["CNT"][0]] if counted else [row < N]


def _rows_ok(row, N, bufs: dict, counted: bool):
    return _all(*_row_conds(row, N, bufs, counted))


def _read(spec: StructuredSpec, ln: _Launch, bufs: dict, row, col):
    """Stage ``ln``'s input at (row, column): a finished value, or the producer's partial
    sums plus its bias, through its activation."""
    src = bufs[ln.src]
    if not ln.src_kb:
        return src[row, col]
    pv = ln.src_stage
    assert pv is not None
    terms = [src[row, s, col] for s in range(ln.src_kb)]
    if pv.bias:
        terms.append(bufs[pv.bias][col])
    v = _sum(*terms)
    return activation(spec.activation)(v) if pv.act else v


def _weight(ln: _Launch, bufs: dict, b, j, c):
    """A weight as float32: 16-bit weights are widened where they are loaded."""
    w = bufs[ln.st.w]
    return widen(w[b, j, c] if ln.st.three_d else w[j, c])


def _finish(spec: StructuredSpec, st: _Stage, v):
    return activation(spec.activation)(v) if st.act else v


@macro
def _store(spec, ln, bufs, row, b, c, sm, part):
    """Stores the output value held in ``sm[0]`` at column ``c`` (terms) of block ``b``:
    finished (+bias, activation) or, split over kb blocks, the partial sum of ``part``."""
    if ln.kb > 1:
        bufs[ln.dst][row, part, _sum(*ln.st.col_out(b, c))] = sm[0]
    else:
        if bool(ln.st.bias):
            sm[0] = sm[0] + bufs[ln.st.bias][_sum(*ln.st.col_out(b, c))]
        bufs[ln.dst][row, _sum(*ln.st.col_out(b, c))] = _finish(spec, ln.st, sm[0])


def _buffers(spec: StructuredSpec, names: list[str], widths: dict[str, tuple[int, ...]],
             dtype: str, N) -> dict:
    """Declares the kernel's parameters ``names`` in order (weights and biases as buffers,
    the weights stored as ``dtype``; X, Y and the workspace as handles matched to token-
    sized buffers [N, ...]); name → buffer."""
    shapes, weights = _weight_shapes(spec), spec.weight_args()
    out, handles = {}, []
    for n in names:
        if n in shapes:
            out[n] = T.arg(n, T.Buffer(shapes[n], dtype if n in weights else "float32"))
        elif n == "CNT":
            out[n] = T.arg(n, T.Buffer((1,), "int32"))
        else:
            handles.append((n, T.arg(f"{n.lower()}_h", T.handle())))
    for n, h in handles:
        out[n] = named(n, T.match_buffer(h, (N, *widths[n]), "float32"))
    return out


def _kernel(spec: StructuredSpec, symbol: str, names: list[str], widths: dict[str, tuple[int, ...]],
            dtype: str, grid):
    """The PrimFunc of one launch over the buffers ``names``; ``grid(bufs, N)``, a macro,
    holds its loops."""

    @T.prim_func
    def kernel():
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        bufs = T.meta_var(_buffers(spec, list(dict.fromkeys(names)), widths, dtype, N))
        grid(bufs, N)

    return kernel


def _tokens(rows: int, N):
    """Token tiles of ``rows`` tokens: the grid's x extent, a form the launch table reads."""
    return N if rows == 1 else (N + (rows - 1)) // rows


def _names(ln: _Launch, counted: bool) -> list[str]:
    """Buffers a stage's kernel reads and writes."""
    names = [ln.src, ln.st.w]
    if ln.src_kb and ln.src_stage is not None and ln.src_stage.bias:
        names.append(ln.src_stage.bias)
    if ln.kb == 1 and ln.st.bias:
        names.append(ln.st.bias)
    return [*names, ln.dst, *(["CNT"] if counted else [])]


# --- gemv: few tokens ---

def _gemv_stage(spec: StructuredSpec, ln: _Launch, t: StructuredTiling, symbol: str,
                widths: dict[str, tuple[int, ...]], dtype: str):
    """The gemv launch of stage ``ln``: a block owns nt columns of one block of the stage,
    mr tokens and 1/kb of the reduction, staged chunk by chunk in shared memory."""
    st = ln.st
    nt, ks, kb, ps, kch = _gemv_shape(st, t)
    ct = ceil_div(st.q, nt)
    if st.k * ct > MAX_GRID_YZ:
        raise CodegenError(f"StructuredFFN CUDA: {st.k * ct} column tiles exceed the grid")
    mr, counted = t.mr, t.counted
    nch, loads, nv = ceil_div(ps, kch), ceil_div(mr * kch, ks * nt), ceil_div(mr, ks)
    ragged = (mr * kch) % (ks * nt) > 0  # the last staging step has idle threads

    def block(by):
        return by // ct if st.k > 1 else 0

    def col(by, tx) -> list:  # the thread's output column within the block (terms)
        return [(by % ct) * nt, tx] if ct > 1 else [tx]

    def lo(bz):
        return bz * ps if kb > 1 else 0

    def hi(bz):
        if ps * kb != st.p:
            return T.min(lo(bz) + ps, st.p)
        return lo(bz) + ps if kb > 1 else st.p

    def flat(e, ty, tx):  # staging element e: token e // kch, input e % kch
        return (e * ks + ty) * nt + tx

    def row_in(bx, f):
        return bx * mr + f // kch

    def input_of(bz, ch, f) -> list:  # staged input (terms) of the split
        return [lo(bz), ch * kch, f % kch]

    def row_in_split(bz, ch, u, ty):
        return _sum(lo(bz), ch * kch, u * ks, ty)

    def row_out(bx, v, ty):
        return _sum(bx * mr, v * ks, ty)

    @macro
    def stage_in(bufs, N, bx, by, bz, ty, tx, xs, ch, e):
        f = T.meta_var(flat(e, ty, tx))
        xs[f // kch, f % kch] = T.if_then_else(
            _rows_ok(row_in(bx, f), N, bufs, counted) and _sum(*input_of(bz, ch, f)) < hi(bz),
            _read(spec, ln, bufs, row_in(bx, f), _sum(*st.col_in(block(by), input_of(bz, ch, f)))),
            T.float32(0))

    @macro
    def block_body(bufs, N, bx, by, bz, ty, tx, acc, w, sm, xs, red):
        for t in T.unroll(mr):
            acc[t] = T.float32(0)
        for ch in range(nch):
            for e in range(loads):
                if ragged:
                    if flat(e, ty, tx) < mr * kch:
                        stage_in(bufs, N, bx, by, bz, ty, tx, xs, ch, e)
                else:
                    stage_in(bufs, N, bx, by, bz, ty, tx, xs, ch, e)
            T.tvm_storage_sync("shared")
            for u in range(kch // ks):
                if row_in_split(bz, ch, u, ty) < hi(bz) and _sum(*col(by, tx)) < st.q:
                    w[0] = _weight(ln, bufs, block(by), row_in_split(bz, ch, u, ty),
                                   _sum(*col(by, tx)))
                    for t in T.unroll(mr):
                        acc[t] = acc[t] + xs[t, u * ks + ty] * w[0]
            T.tvm_storage_sync("shared")
        for t in T.unroll(mr):
            red[ty, t, tx] = acc[t]
        T.tvm_storage_sync("shared")
        for v in range(nv):
            if v * ks + ty < mr and _sum(*col(by, tx)) < st.q:  # noqa: SIM102 (one TIR if each)
                if _rows_ok(row_out(bx, v, ty), N, bufs, counted):
                    sm[0] = red[0, v * ks + ty, tx]
                    for s in range(1, ks):
                        sm[0] = sm[0] + red[s, v * ks + ty, tx]
                    _store(spec, ln, bufs, row_out(bx, v, ty), block(by), col(by, tx), sm, bz)

    @macro
    def grid(bufs, N):
        for bx in T.thread_binding(_tokens(mr, N), thread="blockIdx.x"):
            for by in T.thread_binding(st.k * ct, thread="blockIdx.y"):
                for bz in T.thread_binding(kb, thread="blockIdx.z"):
                    for ty in T.thread_binding(ks, thread="threadIdx.y"):
                        for tx in T.thread_binding(nt, thread="threadIdx.x"):
                            acc = T.alloc_buffer((mr,), "float32", scope="local")
                            w = T.alloc_buffer((1,), "float32", scope="local")
                            sm = T.alloc_buffer((1,), "float32", scope="local")
                            xs = T.alloc_buffer((mr, kch), "float32", scope="shared")
                            red = T.alloc_buffer((ks, mr, nt), "float32", scope="shared")
                            if counted:  # the whole block past the count: nothing to do
                                if bx * mr < bufs["CNT"][0]:
                                    block_body(bufs, N, bx, by, bz, ty, tx, acc, w, sm, xs, red)
                            else:
                                block_body(bufs, N, bx, by, bz, ty, tx, acc, w, sm, xs, red)

    return _kernel(spec, symbol, _names(ln, counted), widths, dtype, grid)


def _reduce(spec: StructuredSpec, ln: _Launch, symbol: str, widths: dict[str, tuple[int, ...]],
            counted: bool, dtype: str):
    """Y = bias + Σ the last stage's partial sums: a thread per output value."""
    tx_n = min(256, 32 * ceil_div(ln.width_out, 32))
    nb, has_bias = ceil_div(ln.width_out, tx_n), bool(ln.st.bias)

    @macro
    def grid(bufs, N):
        for bx in T.thread_binding(N, thread="blockIdx.x"):
            for by in T.thread_binding(nb, thread="blockIdx.y"):
                for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                    sm = T.alloc_buffer((1,), "float32", scope="local")
                    if _all(by * tx_n + tx < ln.width_out, *_row_conds(bx, N, bufs, counted)):
                        sm[0] = bufs[ln.dst][bx, 0, by * tx_n + tx]
                        for s in range(1, ln.kb):
                            sm[0] = sm[0] + bufs[ln.dst][bx, s, by * tx_n + tx]
                        if has_bias:
                            sm[0] = sm[0] + bufs[ln.st.bias][by * tx_n + tx]
                        bufs["Y"][bx, by * tx_n + tx] = sm[0]

    names = [ln.dst, *([ln.st.bias] if ln.st.bias else []), "Y", *(["CNT"] if counted else [])]
    return _kernel(spec, symbol, names, widths, dtype, grid)


# --- tile: many tokens ---

def _tile_stage(spec: StructuredSpec, ln: _Launch, t: StructuredTiling, symbol: str,
                widths: dict[str, tuple[int, ...]], dtype: str):
    """The tiled-GEMM launch of stage ``ln``: a block computes bm tokens × bn columns of
    one block of the stage (tm × tn per thread), bk inputs per shared-memory step."""
    st = ln.st
    bn = _columns(st, t)
    kb, ps = _split(st, t)
    tx_n, ty_n = bn // t.tn, t.bm // t.tm
    threads = tx_n * ty_n
    ct = ceil_div(st.q, bn)
    if st.k * ct > MAX_GRID_YZ:
        raise CodegenError(f"StructuredFFN CUDA: {st.k * ct} column tiles exceed the grid")
    bm, bk, tm, tn, counted = t.bm, t.bk, t.tm, t.tn, t.counted
    nkt = ceil_div(ps, bk)
    aloads, bloads = ceil_div(bm * bk, threads), ceil_div(bk * bn, threads)
    ragged_a, ragged_b = (bm * bk) % threads > 0, (bk * bn) % threads > 0

    def block(by):
        return by // ct if st.k > 1 else 0

    def c0(by):
        return (by % ct) * bn if ct > 1 else 0

    def k_terms(bz, kt, r) -> list:  # input r of step kt of the split (terms)
        return [bz * ps, kt * bk, r] if kb > 1 else [kt * bk, r]

    def flat(e, ty, tx):
        return (e * ty_n + ty) * tx_n + tx

    def row_out(bx, ty, i):
        return _sum(bx * bm, ty, i * ty_n)

    def col(by, tx, jn) -> list:
        return [c0(by), tx, jn * tx_n]

    @macro
    def load_a(bufs, N, bx, by, bz, ty, tx, kt, As, e):
        # input tile: element e → token e // bk, input e % bk (consecutive inputs: coalesced)
        f = T.meta_var(flat(e, ty, tx))
        As[f // bk * (bk + 1) + f % bk] = T.if_then_else(
            _rows_ok(bx * bm + f // bk, N, bufs, counted)
            and _sum(*k_terms(bz, kt, f % bk)) < st.p,
            _read(spec, ln, bufs, bx * bm + f // bk,
                  _sum(*st.col_in(block(by), k_terms(bz, kt, f % bk)))),
            T.float32(0))

    @macro
    def load_b(bufs, by, bz, ty, tx, kt, Bs, e):
        # weight tile: element e → input e // bn, column e % bn (coalesced weight rows)
        f = T.meta_var(flat(e, ty, tx))
        Bs[f // bn, f % bn] = T.if_then_else(
            _sum(*k_terms(bz, kt, f // bn)) < st.p and c0(by) + f % bn < st.q,
            _weight(ln, bufs, block(by), _sum(*k_terms(bz, kt, f // bn)), c0(by) + f % bn),
            T.float32(0))

    @macro
    def block_body(bufs, N, bx, by, bz, ty, tx, acc, a, bw, sm, As, Bs):
        for i in T.unroll(tm):
            for jn in T.unroll(tn):
                acc[i, jn] = T.float32(0)
        for kt in range(nkt):
            for e in range(aloads):
                if ragged_a:
                    if flat(e, ty, tx) < bm * bk:
                        load_a(bufs, N, bx, by, bz, ty, tx, kt, As, e)
                else:
                    load_a(bufs, N, bx, by, bz, ty, tx, kt, As, e)
            for e in range(bloads):
                if ragged_b:
                    if flat(e, ty, tx) < bk * bn:
                        load_b(bufs, by, bz, ty, tx, kt, Bs, e)
                else:
                    load_b(bufs, by, bz, ty, tx, kt, Bs, e)
            T.tvm_storage_sync("shared")
            for kk in T.unroll(bk):
                for i in T.unroll(tm):
                    a[i] = As[(ty + i * ty_n) * (bk + 1) + kk]
                for jn in T.unroll(tn):
                    bw[jn] = Bs[kk, tx + jn * tx_n]
                for i in T.unroll(tm):
                    for jn in T.unroll(tn):
                        acc[i, jn] = acc[i, jn] + a[i] * bw[jn]
            T.tvm_storage_sync("shared")
        for i in T.unroll(tm):
            if _rows_ok(row_out(bx, ty, i), N, bufs, counted):
                for jn in T.unroll(tn):
                    if _sum(*col(by, tx, jn)) < st.q:
                        sm[0] = acc[i, jn]
                        _store(spec, ln, bufs, row_out(bx, ty, i), block(by), col(by, tx, jn),
                               sm, bz)

    @macro
    def grid(bufs, N):
        for bx in T.thread_binding(_tokens(bm, N), thread="blockIdx.x"):
            for by in T.thread_binding(st.k * ct, thread="blockIdx.y"):
                for bz in T.thread_binding(kb, thread="blockIdx.z"):
                    for ty in T.thread_binding(ty_n, thread="threadIdx.y"):
                        for tx in T.thread_binding(tx_n, thread="threadIdx.x"):
                            acc = T.alloc_buffer((tm, tn), "float32", scope="local")
                            a = T.alloc_buffer((tm,), "float32", scope="local")
                            bw = T.alloc_buffer((tn,), "float32", scope="local")
                            sm = T.alloc_buffer((1,), "float32", scope="local")
                            # [bm, bk + 1] (padded: no bank conflicts on the transposing
                            # reads), 1-D or TVM would compact the padding away
                            As = T.alloc_buffer((bm * (bk + 1),), "float32", scope="shared")
                            Bs = T.alloc_buffer((bk, bn), "float32", scope="shared")
                            if counted:
                                if bx * bm < bufs["CNT"][0]:
                                    block_body(bufs, N, bx, by, bz, ty, tx, acc, a, bw, sm, As, Bs)
                            else:
                                block_body(bufs, N, bx, by, bz, ty, tx, acc, a, bw, sm, As, Bs)

    return _kernel(spec, symbol, _names(ln, counted), widths, dtype, grid)


def _check_tiling(t: StructuredTiling) -> None:
    if t.tile:
        if min(t.bm, t.bn, t.bk, t.tm, t.tn) < 1 or t.bm % t.tm or t.bn % t.tn:
            raise CodegenError(f"bad StructuredFFN CUDA tile {t}")
        if (t.bm // t.tm) * (t.bn // t.tn) > 1024:
            raise CodegenError(f"StructuredFFN CUDA tile {t}: more than 1024 threads")
    elif min(t.mr, t.nt, t.threads, t.stage_floats, t.target_blocks, t.min_k_slice,
             t.max_splits) < 1 or t.threads > 1024 or t.nt % 32:
        raise CodegenError(f"bad StructuredFFN CUDA gemv tiling {t}")


def variant_funcs(spec: StructuredSpec, t: StructuredTiling, prefix: str,
                  dtype: str | None = None) -> dict:
    """PrimFuncs of a variant's kernels, by global symbol, in launch order: ``<prefix>_s<i>``
    per stage, then ``<prefix>_reduce`` where the last stage is split. ``dtype``: how the
    weight matrices are stored (float32, float16, bfloat16; default ``spec.dtype``)."""
    check_spec(spec, WEIGHT_DTYPES)
    dtype = dtype or spec.dtype
    if dtype not in WEIGHT_DTYPES:
        raise CodegenError(f"StructuredFFN CUDA weights: {' or '.join(WEIGHT_DTYPES)} "
                           f"only, got {dtype!r}")
    _check_tiling(t)
    plan = _plan(spec, t)
    widths: dict[str, tuple[int, ...]] = {"X": (spec.d_in,), "Y": (spec.d_out,)}
    for ln in plan:
        if ln.dst != "Y":
            widths[ln.dst] = (ln.kb, ln.width_out) if ln.kb > 1 else (ln.width_out,)
    out = {}
    for i, ln in enumerate(plan):
        symbol = f"{prefix}_s{i}"
        make = _tile_stage if t.tile else _gemv_stage
        out[symbol] = make(spec, ln, t, symbol, widths, dtype)
    if plan[-1].kb > 1:
        out[f"{prefix}_reduce"] = _reduce(spec, plan[-1], f"{prefix}_reduce", widths,
                                          t.counted, dtype)
    return out
