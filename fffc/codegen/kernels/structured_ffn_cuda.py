"""``ai.fffc::StructuredFFN`` for CUDA: one launch per GEMM stage, over workspace buffers.

The op is the chain of stages of kernels/structured_ffn.py (``_stages``): per projection
the block-diagonal factor A (k blocks of p inputs and q outputs, indexed in place: no
transposed copies), BlockShuffle's S (m blocks reading the strided inputs h[j·m + b] and
writing the strided outputs out[t·m + b]) and the dense factor U where present; a
projection's last stage carries its bias (the first projection's also the activation, the
same TIR as decode.py's ``ACTIVATIONS``: erff/tanhf/expf, cheap on a GPU). A GPU kernel
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
"""

from __future__ import annotations

from dataclasses import dataclass

from fffc.errors import CodegenError
from fffc.ops import WEIGHT_DTYPES, KernelSpec

from .decode import ACTIVATIONS
from .sparse_ffn_cuda import ceil_div
from .structured_ffn import _Stage, _stages, check_spec
from .text import indent

MAX_GRID_YZ = 65535  # CUDA's limit of gridDim.y and gridDim.z (token tiles go on x)

CUDA_WEIGHT_DTYPES = tuple(WEIGHT_DTYPES.values())  # stored 16-bit, read as float32


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


def _plan(spec: KernelSpec, t: StructuredTiling) -> list[_Launch]:
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


def workspace(spec: KernelSpec, t: StructuredTiling) -> dict[str, int]:
    """Scratch buffers of a variant: name → float32 elements per token."""
    check_spec(spec, CUDA_WEIGHT_DTYPES)
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


def _act(spec: KernelSpec, v: str) -> str:
    return ACTIVATIONS[spec.activation].format(v=v)


def _read(spec: KernelSpec, ln: _Launch, row: str, col: str) -> str:
    """Stage ``ln``'s input at (row, column): a finished value, or the producer's partial
    sums plus its bias, through its activation."""
    if not ln.src_kb:
        return f"{ln.src}[{row}, {col}]"
    pv = ln.src_stage
    assert pv is not None
    terms = [f"{ln.src}[{row}, {s}, {col}]" for s in range(ln.src_kb)]
    if pv.bias:
        terms.append(f"{pv.bias}[{col}]")
    v = " + ".join(terms)
    return _act(spec, f"({v})") if pv.act else v


def _weight(st: _Stage, b: str, j: str, c: str) -> str:
    return f"{st.w}[{b}, {j}, {c}]" if st.three_d else f"{st.w}[{j}, {c}]"


def _rows_ok(row: str, counted: bool) -> str:
    return f"{row} < N and {row} < CNT[0]" if counted else f"{row} < N"


def _declarations(spec: KernelSpec, names: list[str],
                  widths: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """Parameters and match_buffer lines of the buffers ``names``."""
    s = spec.structure
    d, f, do, k1, r1, k2, r2 = spec.d_in, spec.d_ff, spec.d_out, s["k1"], s["r1"], s["k2"], s["r2"]
    m1, s1, m2, s2 = (s.get(n, 0) for n in ("m1", "s1", "m2", "s2"))
    w1, w2 = (m1 * s1 if m1 else r1), (m2 * s2 if m2 else r2)
    fixed = {"A1": (k1, d // k1, r1 // k1), "S1": (m1, r1 // max(m1, 1), s1), "U1": (w1, f),
             "B1": (f,), "A2": (k2, f // k2, r2 // k2), "S2": (m2, r2 // max(m2, 1), s2),
             "U2": (w2, do), "B2": (do,)}
    params, matches = [], []
    for n in names:
        if n in fixed:
            params.append(f'{n}: T.Buffer({fixed[n]!r}, "float32")')
        elif n == "CNT":
            params.append('CNT: T.Buffer((1,), "int32")')
        else:  # token-sized: X, Y and the workspace
            shape = ", ".join(["N", *map(str, widths[n])])
            params.append(f"{n.lower()}_h: T.handle")
            matches.append(f'    {n} = T.match_buffer({n.lower()}_h, ({shape}), "float32")')
    return params, matches


_HEAD = '''
@T.prim_func
def kernel({params}):
    T.func_attr({{"global_symbol": "{symbol}", "tirx.noalias": True}})
    N = T.int32()
'''


def _kernel(spec: KernelSpec, symbol: str, names: list[str], widths: dict[str, tuple[int, ...]],
            body: str) -> str:
    params, matches = _declarations(spec, list(dict.fromkeys(names)), widths)
    return (_HEAD.format(params=", ".join(params), symbol=symbol) + "\n".join(matches) + "\n"
            + indent(body, 4) + "\n")


def _tokens(rows: int) -> str:
    """Token tiles of ``rows`` tokens: the grid's x extent, a form the launch table reads."""
    return "N" if rows == 1 else f"(N + {rows - 1}) // {rows}"


def _names(ln: _Launch) -> list[str]:
    """Buffers a stage's kernel reads and writes (besides CNT)."""
    names = [ln.src, ln.st.w]
    if ln.src_kb and ln.src_stage is not None and ln.src_stage.bias:
        names.append(ln.src_stage.bias)
    if ln.kb == 1 and ln.st.bias:
        names.append(ln.st.bias)
    return [*names, ln.dst]


def _store(spec: KernelSpec, ln: _Launch, row: str, b: str, c: str, v: str, split: str) -> str:
    """The store of one output value held in the local ``v``: finished (bias, activation)
    or, split over kb blocks, a partial sum."""
    col = ln.st.col_out(b, c)
    if ln.kb > 1:
        return f"{ln.dst}[{row}, {split}, {col}] = {v}"
    lines = []
    if ln.st.bias:
        lines.append(f"{v} = {v} + {ln.st.bias}[{col}]")
    lines.append(f"{ln.dst}[{row}, {col}] = {_act(spec, v) if ln.st.act else v}")
    return "\n".join(lines)


# --- gemv: few tokens ---

_GEMV = '''
for bx in T.thread_binding({NTOK}, thread="blockIdx.x"):
    for by in T.thread_binding({NCOL}, thread="blockIdx.y"):
        for bz in T.thread_binding({KB}, thread="blockIdx.z"):
            for ty in T.thread_binding({KS}, thread="threadIdx.y"):
                for tx in T.thread_binding({NT}, thread="threadIdx.x"):
                    acc = T.alloc_buffer(({MR},), "float32", scope="local")
                    w = T.alloc_buffer((1,), "float32", scope="local")
                    sm = T.alloc_buffer((1,), "float32", scope="local")
                    xs = T.alloc_buffer(({MR}, {KCH}), "float32", scope="shared")
                    red = T.alloc_buffer(({KS}, {MR}, {NT}), "float32", scope="shared")
{body}
'''

_GEMV_BODY = '''
for t in T.unroll({MR}):
    acc[t] = T.float32(0)
for ch in range({NCH}):
    for e in range({LOADS}):
{load}
    T.tvm_storage_sync("shared")
    for u in range({KCH} // {KS}):
        if {j} < {HI} and {c} < {Q}:
            w[0] = {weight}
            for t in T.unroll({MR}):
                acc[t] = acc[t] + xs[t, u * {KS} + ty] * w[0]
    T.tvm_storage_sync("shared")
for t in T.unroll({MR}):
    red[ty, t, tx] = acc[t]
T.tvm_storage_sync("shared")
for v in range({NV}):
    if v * {KS} + ty < {MR} and {c} < {Q}:
        if {rows_ok}:
            sm[0] = red[0, v * {KS} + ty, tx]
            for s in range(1, {KS}):
                sm[0] = sm[0] + red[s, v * {KS} + ty, tx]
{store}
'''


def _gemv_stage(spec: KernelSpec, ln: _Launch, t: StructuredTiling, symbol: str,
                widths: dict[str, tuple[int, ...]]) -> str:
    st = ln.st
    nt, ks, kb, ps, kch = _gemv_shape(st, t)
    ct = ceil_div(st.q, nt)
    if st.k * ct > MAX_GRID_YZ:
        raise CodegenError(f"StructuredFFN CUDA: {st.k * ct} column tiles exceed the grid")
    b = f"(by // {ct})" if st.k > 1 else "0"
    c = f"(by % {ct}) * {nt} + tx" if ct > 1 else "tx"
    lo = f"bz * {ps}" if kb > 1 else "0"
    hi = f"T.min({lo} + {ps}, {st.p})" if ps * kb != st.p else (f"{lo} + {ps}" if kb > 1
                                                                  else str(st.p))
    # staging: element e of the chunk → token e // kch, input e % kch (coalesced rows)
    e = f"((e * {ks} + ty) * {nt} + tx)"
    row, jj = f"bx * {t.mr} + {e} // {kch}", f"{lo} + ch * {kch} + {e} % {kch}"
    value = _read(spec, ln, row, st.col_in(b, jj))
    stage = (f"xs[{e} // {kch}, {e} % {kch}] = T.if_then_else({_rows_ok(row, t.counted)} "
             f"and {jj} < {hi}, {value}, T.float32(0))")
    if (t.mr * kch) % (ks * nt):
        stage = f"if {e} < {t.mr * kch}:\n{indent(stage, 4)}"
    j = f"{lo} + ch * {kch} + u * {ks} + ty"
    orow = f"bx * {t.mr} + v * {ks} + ty"
    body = _GEMV_BODY.format(
        MR=t.mr, NCH=ceil_div(ps, kch), LOADS=ceil_div(t.mr * kch, ks * nt), KCH=kch, KS=ks,
        load=indent(stage, 8), j=j, HI=hi, c=c, Q=st.q, weight=_weight(st, b, j, c),
        NV=ceil_div(t.mr, ks), rows_ok=_rows_ok(orow, t.counted),
        store=indent(_store(spec, ln, orow, b, c, "sm[0]", "bz"), 12))
    if t.counted:  # the whole block past the count: nothing to do
        body = f"if bx * {t.mr} < CNT[0]:\n{indent(body, 4)}"
    text = _GEMV.format(NTOK=_tokens(t.mr), NCOL=st.k * ct, KB=kb, KS=ks, NT=nt, MR=t.mr,
                        KCH=kch, body=indent(body, 20))
    return _kernel(spec, symbol, [*_names(ln), *(["CNT"] if t.counted else [])], widths, text)


_REDUCE = '''
for bx in T.thread_binding(N, thread="blockIdx.x"):
    for by in T.thread_binding({NB}, thread="blockIdx.y"):
        for tx in T.thread_binding({TX}, thread="threadIdx.x"):
            sm = T.alloc_buffer((1,), "float32", scope="local")
            if by * {TX} + tx < {W} and {rows_ok}:
                sm[0] = {first}
                for s in range(1, {KB}):
                    sm[0] = sm[0] + {src}[bx, s, by * {TX} + tx]
{store}
'''


def _reduce(spec: KernelSpec, ln: _Launch, symbol: str, widths: dict[str, tuple[int, ...]],
            counted: bool) -> str:
    """Y = bias + Σ the last stage's partial sums: a thread per output value."""
    tx = min(256, 32 * ceil_div(ln.width_out, 32))
    col = f"by * {tx} + tx"
    store = [f"sm[0] = sm[0] + {ln.st.bias}[{col}]"] if ln.st.bias else []
    store.append(f"Y[bx, {col}] = sm[0]")
    text = _REDUCE.format(NB=ceil_div(ln.width_out, tx), TX=tx, W=ln.width_out, KB=ln.kb,
                          rows_ok=_rows_ok("bx", counted), first=f"{ln.dst}[bx, 0, {col}]",
                          src=ln.dst, store=indent("\n".join(store), 16))
    names = [ln.dst, *([ln.st.bias] if ln.st.bias else []), "Y", *(["CNT"] if counted else [])]
    return _kernel(spec, symbol, names, widths, text)


# --- tile: many tokens ---

_TILE = '''
for bx in T.thread_binding({NTOK}, thread="blockIdx.x"):
    for by in T.thread_binding({NCOL}, thread="blockIdx.y"):
        for bz in T.thread_binding({KB}, thread="blockIdx.z"):
            for ty in T.thread_binding({TY}, thread="threadIdx.y"):
                for tx in T.thread_binding({TX}, thread="threadIdx.x"):
                    acc = T.alloc_buffer(({TM}, {TN}), "float32", scope="local")
                    a = T.alloc_buffer(({TM},), "float32", scope="local")
                    bw = T.alloc_buffer(({TN},), "float32", scope="local")
                    sm = T.alloc_buffer((1,), "float32", scope="local")
                    As = T.alloc_buffer(({BM} * {BK1},), "float32", scope="shared")
                    Bs = T.alloc_buffer(({BK}, {BN}), "float32", scope="shared")
{body}
'''

_TILE_BODY = '''
for i in T.unroll({TM}):
    for jn in T.unroll({TN}):
        acc[i, jn] = T.float32(0)
for kt in range({NKT}):
    for e in range({ALOADS}):
{aload}
    for e in range({BLOADS}):
{bload}
    T.tvm_storage_sync("shared")
    for kk in T.unroll({BK}):
        for i in T.unroll({TM}):
            a[i] = As[(ty + i * {TY}) * {BK1} + kk]
        for jn in T.unroll({TN}):
            bw[jn] = Bs[kk, tx + jn * {TX}]
        for i in T.unroll({TM}):
            for jn in T.unroll({TN}):
                acc[i, jn] = acc[i, jn] + a[i] * bw[jn]
    T.tvm_storage_sync("shared")
for i in T.unroll({TM}):
    if {rows_ok}:
        for jn in T.unroll({TN}):
            if {c} < {Q}:
                sm[0] = acc[i, jn]
{store}
'''


def _tile_stage(spec: KernelSpec, ln: _Launch, t: StructuredTiling, symbol: str,
                widths: dict[str, tuple[int, ...]]) -> str:
    st = ln.st
    bn = _columns(st, t)
    kb, ps = _split(st, t)
    lo = f"bz * {ps} + " if kb > 1 else ""
    tx_n, ty_n = bn // t.tn, t.bm // t.tm
    threads = tx_n * ty_n
    ct = ceil_div(st.q, bn)
    if st.k * ct > MAX_GRID_YZ:
        raise CodegenError(f"StructuredFFN CUDA: {st.k * ct} column tiles exceed the grid")
    b = f"(by // {ct})" if st.k > 1 else "0"
    c0 = f"(by % {ct}) * {bn}" if ct > 1 else "0"
    e = f"((e * {ty_n} + ty) * {tx_n} + tx)"
    # input tile: element e → token e // bk, input e % bk (consecutive inputs: coalesced)
    row, kk = f"bx * {t.bm} + {e} // {t.bk}", f"{lo}kt * {t.bk} + {e} % {t.bk}"
    aload = (f"As[{e} // {t.bk} * {t.bk + 1} + {e} % {t.bk}] = T.if_then_else({_rows_ok(row, t.counted)} "
             f"and {kk} < {st.p}, {_read(spec, ln, row, st.col_in(b, kk))}, T.float32(0))")
    if (t.bm * t.bk) % threads:
        aload = f"if {e} < {t.bm * t.bk}:\n{indent(aload, 4)}"
    # weight tile: element e → input e // bn, column e % bn (coalesced weight rows)
    wk, wc = f"{lo}kt * {t.bk} + {e} // {bn}", f"{c0} + {e} % {bn}"
    bload = (f"Bs[{e} // {bn}, {e} % {bn}] = T.if_then_else({wk} < {st.p} and {wc} < {st.q}, "
             f"{_weight(st, b, wk, wc)}, T.float32(0))")
    if (t.bk * bn) % threads:
        bload = f"if {e} < {t.bk * bn}:\n{indent(bload, 4)}"
    orow, c = f"bx * {t.bm} + ty + i * {ty_n}", f"{c0} + tx + jn * {tx_n}"
    body = _TILE_BODY.format(
        TM=t.tm, TN=t.tn, NKT=ceil_div(ps, t.bk), ALOADS=ceil_div(t.bm * t.bk, threads),
        aload=indent(aload, 8), BLOADS=ceil_div(t.bk * bn, threads), bload=indent(bload, 8),
        BK=t.bk, BK1=t.bk + 1, TY=ty_n, TX=tx_n, rows_ok=_rows_ok(orow, t.counted), c=c, Q=st.q,
        store=indent(_store(spec, ln, orow, b, c, "sm[0]", "bz"), 16))
    if t.counted:
        body = f"if bx * {t.bm} < CNT[0]:\n{indent(body, 4)}"
    text = _TILE.format(NTOK=_tokens(t.bm), NCOL=st.k * ct, KB=kb, TY=ty_n, TX=tx_n, TM=t.tm,
                        TN=t.tn, BM=t.bm, BK=t.bk, BK1=t.bk + 1, BN=bn, body=indent(body, 20))
    return _kernel(spec, symbol, [*_names(ln), *(["CNT"] if t.counted else [])], widths, text)


def _check_tiling(t: StructuredTiling) -> None:
    if t.tile:
        if min(t.bm, t.bn, t.bk, t.tm, t.tn) < 1 or t.bm % t.tm or t.bn % t.tn:
            raise CodegenError(f"bad StructuredFFN CUDA tile {t}")
        if (t.bm // t.tm) * (t.bn // t.tn) > 1024:
            raise CodegenError(f"StructuredFFN CUDA tile {t}: more than 1024 threads")
    elif min(t.mr, t.nt, t.threads, t.stage_floats, t.target_blocks, t.min_k_slice,
             t.max_splits) < 1 or t.threads > 1024 or t.nt % 32:
        raise CodegenError(f"bad StructuredFFN CUDA gemv tiling {t}")


def variant_sources(spec: KernelSpec, t: StructuredTiling, prefix: str) -> dict[str, str]:
    """TVMScript of a variant's kernels, by global symbol, in launch order: ``<prefix>_s<i>``
    per stage, then ``<prefix>_reduce`` where the last stage is split."""
    check_spec(spec, CUDA_WEIGHT_DTYPES)
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
        out[symbol] = make(spec, ln, t, symbol, widths)
    if plan[-1].kb > 1:
        out[f"{prefix}_reduce"] = _reduce(spec, plan[-1], f"{prefix}_reduce", widths, t.counted)
    return out
