"""``ai.fffc::StructuredFFN`` for CPUs, as TVMScript (tirx) generators.

The op is a chain of up to four GEMM *stages*, each ``dst = src · blockdiag(W)`` plus an
epilogue::

    X ─A1 (k1 blocks)─▶ H1 ─U1─▶ +B1, act ─▶ H2 ─A2 (k2 blocks)─▶ H3 ─U2─▶ +B2 ─▶ Y

A projection without its dense factor U is one stage (A1 then carries U1's epilogue, +B1
and the activation; A2 carries +B2 and writes Y), so the merged dense FFN (k = 1, no U:
A1 = W1 [1, d_in, d_ff], A2 = W2 [1, d_ff, d_out]) is the two-stage case of the same code.
A stage has ``k`` blocks of ``p`` inputs and ``q`` outputs (a dense factor: k = 1).
A BlockShuffle (Monarch) projection has a second block-diagonal stage S [m, r, s] right
after A (before U): its block b reads the strided inputs h[j·m + b] and writes the strided
outputs out[t·m + b] (``_Stage.shuffle``: the same stage code with strided indexing; in
small/batch the stores are strided, in decode/gemv the reduction of its partial sums).

Variants (``structured_variants``; their token ranges: bench/bench_structured_kernels.py):

* **decode** (1 token) and **gemv** (a few tokens): split-K streaming. A stage's task owns
  a contiguous range of weight rows of one block and reads them whole (one long
  sequential stream per task, which the prefetchers follow: weight rows are often 16 KiB
  apart, so column-strip reads would start a new page every row), accumulating ``rows``
  weight rows per pass into private partial sums of all the block's outputs (``mr``
  tokens per pass). The next stage's task first reduces the partial sums of the inputs it
  owns (plus bias and activation); the last stage's are reduced into Y (+ bias). One
  parallel region per stage, plus the final reduction.
* **small** and **batch** (more tokens): each stage is one parallel region over column
  groups (``group`` tiles of ``nr`` outputs of one block, at least ``tasks`` tasks where the
  columns allow). A task packs its weight panel (``kc`` rows × the group's columns,
  each row read as one contiguous segment) into a local buffer, then runs a register-tiled
  micro-kernel over every token tile: ``mr`` tokens × ``nr`` columns of accumulators, one
  step per input (``mr`` broadcasts, ``nr / lanes`` vector loads, ``mr · nr / lanes``
  FMAs), reduction blocks of ``kc`` steps chained through the output. Intermediates live
  in scratch rows padded by ``PAD`` floats (rows 4 KiB apart would alias in L1); X is
  copied into such rows first. **batch** (mr 6) processes the tokens in blocks of
  ``block`` (bounded scratch that stays in L3; the weights are packed once per block);
  **small** (mr 4: less padding for few tokens) takes all tokens in one block.

Padded token rows read the last real token (clamped) and are never stored, so there is no
remainder path over tokens. Tokens are split by the column groups, not by token chunks:
a chunk per thread would repack every weight once per chunk.

Activations take their vectorizable polynomial forms (``pieces.ACTIVATIONS``): TVM lowers
``T.erf``/``T.tanh``/``T.sigmoid`` on CPUs to a scalar libm call per element, which would
cost more than the GEMMs at thousands of tokens.

Each variant is a Python function that defines a ``@T.prim_func`` whose closure variables
carry the spec's shapes and the tiling, and returns its PrimFunc. TVMScript evaluates a
Python ``if`` on such a value while parsing (only the taken branch becomes TIR). A stage
is emitted by a Python function that defines TVMScript macros (``_tvm.macro``) over the
stage's constants and calls them, so the stage list is unrolled in Python. Index
expressions are built by Python functions, with the parser's operators, from lists of
terms added left to right: the association is part of the TIR, which
scripts/kernel_snapshot.py compares across refactorings. Conditions are written in
TVMScript (its ``and`` builds And nodes without folding).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import Projection, StructuredSpec

from .._tvm import T, macro, named
from ..limits import MAX_TOKENS
from .pieces import activation, check_activations


@dataclass(frozen=True)
class Tiles:
    """Loop tiling of one variant."""

    mr: int  # tokens per register tile (gemv: per pass over the partial sums)
    nr: int = 16  # columns per register tile / vector step (a multiple of the lanes)
    kc: int = 512  # small/batch: most reduction steps per packed panel
    group: int = 16  # small/batch: most column tiles per task (panel: group·kc·nr floats)
    tasks: int = 8  # at least this many tasks per stage where the shape allows
    block: int = 0  # small/batch: tokens per block (a multiple of mr; 0: all at once)
    rows: int = 4  # gemv: weight rows per pass over the partial sums


# The variants' token ranges (bench/bench_structured_kernels.py --all-variants): decode for
# one token, gemv up to GEMV_MAX_TOKENS, small up to SMALL_MAX_TOKENS, then batch (its
# blocks keep the intermediates in L3 and its scratch bounded; mr 6 runs more FMA chains).
GEMV_MAX_TOKENS = 8
SMALL_MAX_TOKENS = 64
VARIANT_TILES = {
    "decode": Tiles(mr=1, rows=8),
    "gemv": Tiles(mr=2, rows=8),
    "small": Tiles(mr=4),
    "batch": Tiles(mr=6, block=516),
}


def structured_variants(spec: StructuredSpec) -> list[tuple[str, int, int]]:
    """(variant, min_tokens, max_tokens inclusive) covering 1..MAX_TOKENS without gaps."""
    check_spec(spec)
    return [("decode", 1, 1), ("gemv", 2, GEMV_MAX_TOKENS),
            ("small", GEMV_MAX_TOKENS + 1, SMALL_MAX_TOKENS),
            ("batch", SMALL_MAX_TOKENS + 1, MAX_TOKENS)]


def check_spec(spec: StructuredSpec, dtypes: tuple[str, ...] = ("float32",)) -> None:
    """Raise CodegenError for specs this kernel cannot compute (a StructuredSpec's blocks
    and widths are consistent by construction)."""
    if not isinstance(spec, StructuredSpec):
        raise CodegenError(f"not a StructuredFFN spec: {spec}")
    if spec.dtype not in dtypes:  # weight storage: float32 (CPUs); CUDA also 16-bit
        raise CodegenError(f"StructuredFFN weights: {' or '.join(dtypes)} only here, got {spec.dtype!r}")
    check_activations("StructuredFFN", spec.activation)
    if min(spec.d_in, spec.d_ff, spec.d_out, spec.first.width, spec.second.width) < 1:
        raise CodegenError(f"StructuredFFN dims and blocks must be positive: {spec}")


def _sum(*terms):
    """``terms[0] + terms[1] + ...`` added left to right (the order fixes the TIR tree)."""
    return functools.reduce(operator.add, terms)


# --- stages ---

@dataclass(frozen=True)
class _Stage:
    src: str  # input scratch buffer ("H0": the padded copy of X)
    w: str  # weight argument
    three_d: bool  # w is [k, p, q] (a block-diagonal factor) rather than [p, q]
    k: int
    p: int
    q: int
    bias: str | None  # bias argument added in the epilogue
    act: bool  # apply the activation in the epilogue
    dst: str  # output: a scratch buffer or "Y"
    shuffle: bool = False  # BlockShuffle's S: block b reads inputs j·k + b, writes c·k + b

    def col_in(self, b, j: Sequence) -> list:
        """The input column (of the source row) of row ``j`` of block ``b``, as terms that
        follow an offset (``j``: terms too)."""
        return [_sum(*j) * self.k, b] if self.shuffle else [b * self.p, *j]

    def col_out(self, b, c: Sequence) -> list:
        """The output column (of the destination row) of column ``c`` of block ``b``, as
        terms that follow an offset (``c``: terms too)."""
        return [_sum(*c) * self.k, b] if self.shuffle else [b * self.q, *c]

    def split_out(self, col) -> tuple:
        """(block, column within the block) of output column ``col`` (inverse of col_out)."""
        if self.shuffle:
            return col % self.k, col // self.k
        return col // self.q, col % self.q


def _stages(spec: StructuredSpec) -> list[_Stage]:
    """Per projection n: A_n [k, p, q], then S_n (BlockShuffle) and U_n where present; the
    projection's last stage carries its bias (and the first one's the activation). Stage
    i reads scratch H{i} (H0: the padded copy of X) and writes H{i + 1} (the last: Y)."""
    out: list[_Stage] = []

    def projection(n: int, d_in: int, d_out: int, bias: str | None, act: bool, last: bool):
        pr: Projection = spec.projections[n - 1]
        k, r, m, sw = pr.blocks, pr.width, pr.shuffle_blocks, pr.shuffle_width
        parts = [(f"A{n}", True, k, d_in // k, r // k, False)]
        if m:
            parts.append((f"S{n}", True, m, r // m, sw, True))
        if pr.dense:
            parts.append((f"U{n}", False, 1, m * sw if m else r, d_out, False))
        for idx, (w, three_d, kb, p, q, shuffle) in enumerate(parts):
            end = idx == len(parts) - 1
            dst = "Y" if end and last else f"H{len(out) + 1}"
            out.append(_Stage(f"H{len(out)}", w, three_d, kb, p, q, bias if end else None,
                              act and end, dst, shuffle))

    projection(1, spec.d_in, spec.d_ff, "B1" if spec.has_b1 else None, True, False)
    projection(2, spec.d_ff, spec.d_out, "B2" if spec.has_b2 else None, False, True)
    return out


PAD = 16  # floats of padding per scratch row: rows 4 KiB apart alias in L1 (scratch
# buffers are 1-D: TVM compacts a 2-D buffer to its accessed columns, dropping the pad)


def _widths(spec: StructuredSpec) -> dict[str, int]:
    """Row length (floats, padded) of each scratch buffer."""
    widths = {"H0": spec.d_in + PAD}
    for st in _stages(spec):
        widths[st.dst] = st.k * st.q + PAD
    return widths


def _weight_shapes(spec: StructuredSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every weight and bias input the spec may have."""
    p1, p2 = spec.projections
    d, f, do, k1, r1, k2, r2 = spec.d_in, spec.d_ff, spec.d_out, p1.blocks, p1.width, p2.blocks, p2.width
    m1, s1, m2, s2 = p1.shuffle_blocks, p1.shuffle_width, p2.shuffle_blocks, p2.shuffle_width
    w1, w2 = p1.out_width, p2.out_width  # rows of U
    return {"A1": (k1, d // k1, r1 // k1), "S1": (m1, r1 // max(m1, 1), s1), "U1": (w1, f),
            "B1": (f,), "A2": (k2, f // k2, r2 // k2), "S2": (m2, r2 // max(m2, 1), s2),
            "U2": (w2, do), "B2": (do,)}


def _arguments(spec: StructuredSpec) -> dict:
    """Declares the kernel's parameters, ``spec.arg_names()`` in order (the list depends on
    the spec, so the body declares them, as a written signature would): X and Y as handles
    the body matches to [N, d] buffers, the weights as buffers."""
    shapes = _weight_shapes(spec)
    return {n: T.arg(n.lower(), T.handle()) if n in ("X", "Y")
            else T.arg(n, T.Buffer(shapes[n], "float32", align=4)) for n in spec.arg_names()}


def _scratch(names: list[str], rows, widths: dict[str, int]) -> dict:
    """Allocates the 1-D scratch buffers ``names``, ``rows`` padded rows each."""
    return {n: named(n, T.alloc_buffer((rows * widths[n],), "float32")) for n in names}


@macro
def _vector_loop(n, store, lanes=16):
    """``store(e)`` for the elements e < n: ``lanes``-wide vector steps, then a narrower
    tail (no n-lane LLVM vectors)."""
    if n // lanes > 0:
        for vo in range(n // lanes):
            for vi in T.vectorized(lanes):
                store(vo * lanes + vi)
    if n % lanes > 0:
        for vi in T.vectorized(n % lanes):
            store(n // lanes * lanes + vi)


def _store(buf, indices, value) -> None:
    """``buf[indices] = value`` where called (a statement for ``_vector_loop``)."""
    T.buffer_store(buf, value, indices)


# --- small / batch: column groups, packed panels, register micro-kernel ---

@dataclass(frozen=True)
class _Rows:
    """How a variant maps the rows of token tile ``tb`` (``ti`` < mr) to buffer rows."""

    mr: int
    ntb: object  # token tiles
    r0: object = None  # batch: the block's first token (scratch holds the block's rows)

    def scratch(self, tb, ti):
        return tb * self.mr + ti

    def y(self, tb, ti):
        return tb * self.mr + ti if self.r0 is None else _sum(self.r0, tb * self.mr, ti)


def _kc(p: int, kc_max: int) -> tuple[int, int]:
    """Reduction block length (a multiple of 4 where it can) and the number of blocks."""
    kc = -(-p // -(-p // kc_max))
    kc = min(p, -(-kc // 4) * 4)
    return kc, -(-p // kc)


def _columns_stage(spec: StructuredSpec, st: _Stage, t: Tiles, rows: _Rows, bufs: dict, N, Y):
    """One parallel region over the stage's tasks: per block, groups of full column tiles
    (up to ``t.group``, at least ``t.tasks`` tasks where the columns allow), then the
    block's tail tile (``q % nr`` columns) as a task of its own. A task packs each
    reduction block of its weight panel, then runs the micro-kernel over every token tile:
    acc[mr, width] = init + Σ_kk src[row, kk] · pk[jt, kk, :], chained through the output
    across reduction blocks (bias and activation in the first and last)."""
    mr, nr = t.mr, t.nr
    full, tail = divmod(st.q, nr)
    group = max(1, min(t.group, st.k * full // t.tasks))
    ng = -(-full // group)
    per_block = ng + (1 if tail else 0)
    kc, nkb = _kc(st.p, t.kc)
    widths = _widths(spec)
    src, w = bufs[st.src], bufs[st.w]
    bias = bufs[st.bias] if st.bias else None
    to_y = st.dst == "Y"
    dst = Y if to_y else bufs[st.dst]
    act = activation(spec.activation, vector=True) if st.act else None
    has_act, split_act = act is not None, act is not None and nkb > 1
    both, ragged = bool(full and tail), st.p % kc > 0

    def block_group(task) -> tuple:
        return (task // per_block, task % per_block) if st.k > 1 else (0, task)

    def full_tiles(g):
        return T.min(group, full - g * group) if full % group else group

    def weight(b, k, col):
        return w[b, k, col] if st.three_d else w[k, col]

    def source(tb, ti, b, k0, kk):
        return src[_sum(rows.scratch(tb, ti) * widths[st.src], *st.col_in(b, [k0, kk]))]

    def out_at(tb, ti, b, col: list) -> list:
        """Indices of output column ``col`` (terms) of row ``ti`` of token tile ``tb``."""
        oc = st.col_out(b, col)
        if to_y:
            return [rows.y(tb, ti), _sum(*oc)]
        return [_sum(rows.scratch(tb, ti) * widths[st.dst], *oc)]

    def so_far(tb, ti, b, col: list):
        """The output element as the previous reduction block left it."""
        if to_y:
            return Y[T.min(rows.y(tb, ti), N - 1), _sum(*st.col_out(b, col))]
        return dst[out_at(tb, ti, b, col)]

    def init(b, col: list):
        return bias[_sum(*st.col_out(b, col))] if bias is not None else T.float32(0)

    def out(v, final: bool):
        return act(v) if final else v

    @macro
    def store(tb, jt, b, col0, width, acc, final):
        for ti in T.unroll(mr):
            if to_y:
                if rows.y(tb, ti) < N:  # padded token rows are never stored
                    for j in T.vectorized(width):
                        dst[out_at(tb, ti, b, [col0, jt * nr, j])] = out(acc[ti, j], final)
            else:
                for j in T.vectorized(width):
                    dst[out_at(tb, ti, b, [col0, jt * nr, j])] = out(acc[ti, j], final)

    @macro
    def reduction_block(kb, b, col0, nt, width, acc, pk):
        k0 = T.meta_var(kb * kc)
        kcl = T.meta_var(T.min(kc, st.p - k0) if ragged else kc)
        for kk in range(kcl):
            for jt in range(nt):
                for j in T.vectorized(width):
                    pk[jt, kk, j] = weight(b, k0 + kk, _sum(col0, jt * nr, j))
        for tb in range(rows.ntb):
            for jt in range(nt):
                for ti in T.unroll(mr):
                    for j in T.vectorized(width):
                        acc[ti, j] = (T.if_then_else(kb == 0, init(b, [col0, jt * nr, j]),
                                                     so_far(tb, ti, b, [col0, jt * nr, j]))
                                      if nkb > 1 else init(b, [col0, jt * nr, j]))
                for kk in range(kcl):
                    for ti in T.unroll(mr):
                        for j in T.vectorized(width):
                            acc[ti, j] = acc[ti, j] + source(tb, ti, b, k0, kk) * pk[jt, kk, j]
                if split_act:  # the activation after the last reduction block only
                    if kb == nkb - 1:
                        store(tb, jt, b, col0, width, acc, True)
                    else:
                        store(tb, jt, b, col0, width, acc, False)
                else:
                    store(tb, jt, b, col0, width, acc, has_act)

    @macro
    def task_tiles(b, col0, nt, width, acc, pk):
        if nkb > 1:
            for kb in range(nkb):
                reduction_block(kb, b, col0, nt, width, acc, pk)
        else:
            reduction_block(0, b, col0, nt, width, acc, pk)

    @macro
    def region():
        for task in T.parallel(st.k * per_block):
            pk = T.alloc_buffer((group, kc, nr), "float32", scope="local")
            acc = T.alloc_buffer((mr, nr), "float32", scope="local")
            acct = T.alloc_buffer((mr, nr), "float32", scope="local")
            b, g = T.meta_var(block_group(task))
            if both:
                if g < ng:
                    task_tiles(b, g * (group * nr), full_tiles(g), nr, acc, pk)
                else:
                    task_tiles(b, full * nr, 1, tail, acct, pk)
            elif full > 0:
                task_tiles(b, g * (group * nr), full_tiles(g), nr, acc, pk)
            else:
                task_tiles(b, full * nr, 1, tail, acct, pk)

    region()


def _columns_kernel(spec: StructuredSpec, t: Tiles, symbol: str):
    """Stage by stage, each one parallel region over column groups; with ``t.block``,
    over blocks of that many tokens in turn (scratch of one block: bounded memory). X is
    first copied into padded scratch rows (rows 4 KiB apart alias in L1, and the
    micro-kernel reads mr of them at a time)."""
    stages, widths, mr, block = _stages(spec), _widths(spec), t.mr, t.block
    scratch = ["H0", *sorted({st.dst for st in stages} - {"Y"})]

    def copy_x(h0, x, row, x_row) -> None:
        _vector_loop(spec.d_in, lambda e: _store(h0, [row * widths["H0"] + e], x[x_row, e]))

    def run_stages(args: dict, bufs: dict, rows: _Rows, N, Y) -> None:
        for st in stages:
            _columns_stage(spec, st, t, rows, {**args, **bufs}, N, Y)

    @T.prim_func
    def kernel():
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        args = T.meta_var(_arguments(spec))
        X = T.match_buffer(args["X"], (N, spec.d_in), "float32", align=4)
        Y = T.match_buffer(args["Y"], (N, spec.d_out), "float32", align=4)
        if block > 0:
            H = T.meta_var(_scratch(scratch, block, widths))
            for blk in range((N + (block - 1)) // block):
                r0 = blk * block
                ntb = (T.min(block, N - r0) + (mr - 1)) // mr
                for row in T.parallel(ntb * mr):
                    copy_x(H["H0"], X, row, T.min(r0 + row, N - 1))
                run_stages(args, H, _Rows(mr, ntb, r0), N, Y)
        else:
            rows_n = T.meta_var((N + (mr - 1)) // mr * mr)
            H = T.meta_var(_scratch(scratch, rows_n, widths))
            for row in range(rows_n):
                copy_x(H["H0"], X, row, T.min(row, N - 1))
            run_stages(args, H, _Rows(mr, (N + (mr - 1)) // mr), N, Y)

    return kernel


# --- decode / gemv: split-K streaming over whole weight rows ---

def _divisor_parts(p: int, cap: int) -> int:
    """The most row parts ≤ cap that split p rows evenly (1 at worst)."""
    return max(r for r in range(1, max(1, cap) + 1) if p % r == 0)


def _gemv_stage(spec: StructuredSpec, t: Tiles, stages: list[_Stage], parts: list[int], i: int,
                bufs: dict, X, N, npad) -> None:
    """Stage ``i`` of the split-K kernel: task = (block b, row part), weight rows
    [lo, lo + rows). Stage i > 0 first reduces the previous stage's partial sums of the
    task's inputs (plus bias, activation) into I<i>."""
    st, R, mr, nr = stages[i], parts[i], t.mr, t.nr
    qs, rows = st.q + PAD, st.p // R
    full, tail = divmod(st.q, nr)
    passes, rem = divmod(rows, t.rows)
    P, w, inp = bufs[f"P{i}"], bufs[st.w], bufs.get(f"I{i}")

    def block_lo(task) -> tuple:
        return (task // R if st.k > 1 else 0), ((task % R) * rows if R > 1 else 0)

    def source(task, t0, tb, ti, k: list):
        b, lo = block_lo(task)
        if i == 0:
            return X[T.min(tb * mr + ti, N - 1), _sum(b * st.p, lo, *k)]
        return inp[_sum((t0 + tb * mr + ti) * rows, *k)]

    def weight(task, k: list, c):
        b, lo = block_lo(task)
        return w[b, _sum(lo, *k), c] if st.three_d else w[_sum(lo, *k), c]

    def at(t0, tb, ti, c0, j):
        return _sum((t0 + tb * mr + ti) * qs, c0, j)

    def step(task, t0, tb, ti, ks: list, c0, j):
        """P[row, c0 + j] + Σ_k source(k) · weight(k, c0 + j) over the weight rows ks."""
        return _sum(P[at(t0, tb, ti, c0, j)],
                    *[source(task, t0, tb, ti, k) * weight(task, k, c0 + j) for k in ks])

    def pass_rows(kq) -> list:
        return [[kq * t.rows, j] for j in range(t.rows)]

    def zero_row(t0, row) -> None:
        _vector_loop(st.q, lambda e: _store(P, [(t0 + row) * qs + e], T.float32(0)))

    @macro
    def update(task, t0, tb, ks):
        if full > 0:
            for v in range(full):
                for ti in T.unroll(mr):
                    for j in T.vectorized(nr):
                        P[at(t0, tb, ti, v * nr, j)] = step(task, t0, tb, ti, ks, v * nr, j)
        if tail > 0:
            for ti in T.unroll(mr):
                for j in T.vectorized(tail):
                    P[at(t0, tb, ti, full * nr, j)] = step(task, t0, tb, ti, ks, full * nr, j)

    @macro
    def single_row(task, t0, ks):
        for tb in range(npad // mr):
            update(task, t0, tb, ks)

    def remainder_rows(task, t0) -> None:
        for j in range(rem):
            single_row(task, t0, [[passes * t.rows + j]])

    inputs = _gemv_inputs(spec, stages[i - 1], parts[i - 1], st, R, bufs, i, npad) if i else None

    @macro
    def stage():
        for task in T.parallel(st.k * R):
            t0 = task * npad
            if i > 0:
                inputs(task, t0)
            for row in range(npad):
                zero_row(t0, row)
            if passes > 0:
                for kq in range(passes):
                    for tb in range(npad // mr):
                        update(task, t0, tb, pass_rows(kq))
            remainder_rows(task, t0)

    stage()


def _gemv_inputs(spec: StructuredSpec, pv: _Stage, rp: int, st: _Stage, R: int, bufs: dict,
                 i: int, npad):
    """The macro that sets I_i[task rows] = act(bias + Σ partial sums of the previous stage
    ``pv``) for the task's inputs: columns b·p + lo + kk of pv's output."""
    rows, qsp = st.p // R, pv.q + PAD
    prev, inp = bufs[f"P{i - 1}"], bufs[f"I{i}"]
    bias = bufs[pv.bias] if pv.bias else None
    act = activation(spec.activation, vector=True)
    starts = [bb * st.p + r * rows for bb in range(st.k) for r in range(R)]
    # each task's inputs lie in one block of the previous stage: vector steps; else
    # (BlockShuffle: strided inputs or outputs) scalar ones
    vector = (not st.shuffle and not pv.shuffle
              and all(a // pv.q == (a + rows - 1) // pv.q for a in starts))

    def reduced(task, row, kk):
        b = task // R if st.k > 1 else 0
        lo = (task % R) * rows if R > 1 else 0
        if vector:
            pb, off = (b * st.p + lo) // pv.q, (b * st.p + lo) % pv.q + kk
        else:
            pb, off = pv.split_out(_sum(*st.col_in(b, [lo, kk])))
        terms = [prev[((pb * rp + r) * npad + row) * qsp + off] for r in range(rp)]
        return _sum(bias[_sum(*pv.col_out(pb, [off]))], *terms) if bias is not None else _sum(*terms)

    def reduce_row(task, row, base) -> None:
        _vector_loop(rows, lambda e: _store(inp, [base + e], reduced(task, row, e)))

    def activate_row(base) -> None:  # in place: the activation repeats its operand
        _vector_loop(rows, lambda e: _store(inp, [base + e], act(inp[base + e])))

    @macro
    def inputs(task, t0):
        for row in range(npad):
            base = (t0 + row) * rows
            if vector:
                reduce_row(task, row, base)
            else:
                for kk in range(rows):
                    inp[base + kk] = reduced(task, row, kk)
            if pv.act:
                activate_row(base)

    return inputs


def _gemv_kernel(spec: StructuredSpec, t: Tiles, symbol: str):
    """Split-K streaming for few tokens: a stage's task owns a contiguous range of weight
    rows of one block (whole rows: one long sequential read the prefetchers follow) and
    accumulates its share of every output column into private partial sums P<i>, ``t.rows``
    weight rows per pass over them. The next stage's task first reduces the partial sums
    of the inputs it owns (plus bias, activation); the last stage's are reduced into Y."""
    stages, mr = _stages(spec), t.mr
    parts = [_divisor_parts(st.p, t.tasks // st.k) for st in stages]
    last, R, qs = stages[-1], parts[-1], stages[-1].q + PAD

    def allocate(args: dict, rows_n) -> dict:
        """The arguments and the scratch buffers (allocated here), by name."""
        out = dict(args)
        for i, st in enumerate(stages):
            out[f"P{i}"] = named(f"P{i}", T.alloc_buffer(
                (st.k * parts[i] * rows_n * (st.q + PAD),), "float32"))
            if i:
                out[f"I{i}"] = named(f"I{i}", T.alloc_buffer(
                    (st.k * parts[i] * rows_n * (st.p // parts[i]),), "float32"))
        return out

    def run_stages(bufs: dict, X, N, npad) -> None:
        for i in range(len(stages)):
            _gemv_stage(spec, t, stages, parts, i, bufs, X, N, npad)

    def output(bufs: dict, Y, i, npad) -> None:
        """Y[token, block i % k] = bias + Σ the last stage's partial sums."""
        P, b = bufs[f"P{len(stages) - 1}"], i % last.k
        bias = bufs[last.bias] if last.bias else None

        def value(c):
            terms = [P[((b * R + r) * npad + i // last.k) * qs + c] for r in range(R)]
            if bias is None:
                return _sum(*terms)
            return _sum(bias[_sum(*last.col_out(b, [c]))], *terms)

        _vector_loop(last.q, lambda c: _store(Y, [i // last.k, _sum(*last.col_out(b, [c]))],
                                              value(c)))

    @T.prim_func
    def kernel():
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        args = T.meta_var(_arguments(spec))
        X = T.match_buffer(args["X"], (N, spec.d_in), "float32", align=4)
        Y = T.match_buffer(args["Y"], (N, spec.d_out), "float32", align=4)
        bufs = T.meta_var(allocate(args, (N + (mr - 1)) // mr * mr))
        npad = (N + (mr - 1)) // mr * mr  # token rows, padded to whole tiles
        run_stages(bufs, X, N, npad)
        for i in T.parallel(N * last.k):
            output(bufs, Y, i, npad)

    return kernel


VARIANTS = {"decode": _gemv_kernel, "gemv": _gemv_kernel, "small": _columns_kernel,
            "batch": _columns_kernel}


def structured_ffn_primfunc(spec: StructuredSpec, variant: str, symbol: str,
                            tiles: Tiles | None = None):
    """The PrimFunc of one variant; arguments in ``spec.arg_names()`` order. ``tiles``
    overrides the variant's tiling (benchmarks)."""
    check_spec(spec)
    if variant not in VARIANTS:
        raise CodegenError(f"no StructuredFFN variant {variant!r}; have {sorted(VARIANTS)}")
    t = tiles or VARIANT_TILES[variant]
    if min(t.mr, t.nr, t.kc, t.group, t.tasks, t.rows) < 1 or t.block < 0 or t.block % t.mr:
        raise CodegenError(f"bad StructuredFFN tiling {t}")
    return VARIANTS[variant](spec, t, symbol)


def structured_ffn_source(spec: StructuredSpec, variant: str, symbol: str,
                          tiles: Tiles | None = None) -> str:
    """The TVMScript of one variant (for --dump and debugging)."""
    return structured_ffn_primfunc(spec, variant, symbol, tiles).script()
