"""``ai.fffc::StructuredFFN`` as hand-written TVMScript (tirx) for CPUs.

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

Variants (``structured_variants``; crossovers measured with
bench/bench_structured_kernels.py on the 2-core Zen 4 VM, d 1024 / d_ff 4096, ~32% of
the dense parameters, and on the merged dense shape):

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
remainder path over tokens. A parallel chunk-per-thread design (each thread running all
stages on its own token chunk with chunk-local scratch) measured 5-10% slower than
``batch`` at 512-2048 tokens: every chunk repacks all weights.

Activations are vectorizable polynomial forms: TVM lowers ``T.erf``/``T.tanh``/
``T.sigmoid`` (decode.py's ACTIVATIONS) on x86 to a scalar libm call per element
(``erff``/``expf``), which would cost more than the GEMMs at thousands of tokens. erf is
Eigen's rational approximation on [-4, 4] (abs error 4e-7), exp Cephes' degree-6
polynomial times 2^n built from the exponent bits; silu = z / (1 + exp(-z)), and
gelu_tanh uses 0.5·(1 + tanh(u)) = 1 / (1 + exp(-2u)).
"""

from __future__ import annotations

from dataclasses import dataclass

from fffc.errors import CodegenError
from fffc.ops import STRUCTURED_FFN, KernelSpec

from ..schedules import MAX_TOKENS
from .text import TOKEN_MAJOR_HEAD, indent, parse, vector_loop


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


# Crossovers (bench/bench_structured_kernels.py --all-variants, 2 threads, medians, LowRank /
# BlockDense / merged): decode wins at 1 token (1.1-1.5x faster than gemv); gemv up to 8
# (4 tokens: 0.21 vs small 0.32 ms LowRank; 8: a tie on BlockDense; 12: small 0.51 vs gemv
# 0.55/0.67 ms); small and batch are within ±3% from 48 to 512 tokens, small ahead at 16-32
# (4-7%), batch at 2048 (7-10%: blocks keep the intermediates in L3, mr 6 runs more FMA
# chains), and batch's scratch stays bounded.
GEMV_MAX_TOKENS = 8
SMALL_MAX_TOKENS = 64
VARIANT_TILES = {
    "decode": Tiles(mr=1, rows=8),
    "gemv": Tiles(mr=2, rows=8),
    "small": Tiles(mr=4),
    "batch": Tiles(mr=6, block=516),
}


def structured_variants(spec: KernelSpec) -> list[tuple[str, int, int]]:
    """(variant, min_tokens, max_tokens inclusive) covering 1..MAX_TOKENS without gaps."""
    check_spec(spec)
    return [("decode", 1, 1), ("gemv", 2, GEMV_MAX_TOKENS),
            ("small", GEMV_MAX_TOKENS + 1, SMALL_MAX_TOKENS),
            ("batch", SMALL_MAX_TOKENS + 1, MAX_TOKENS)]


def check_spec(spec: KernelSpec, dtypes: tuple[str, ...] = ("float32",)) -> None:
    """Raise CodegenError for specs this kernel cannot compute."""
    if spec.op != STRUCTURED_FFN.name:
        raise CodegenError(f"not a StructuredFFN spec: {spec.op!r}")
    if spec.dtype not in dtypes:  # weight storage: float32 (CPUs); CUDA also 16-bit
        raise CodegenError(f"StructuredFFN weights: {' or '.join(dtypes)} only here, got {spec.dtype!r}")
    if spec.activation not in _ACT:
        raise CodegenError(f"StructuredFFN activation {spec.activation!r} has no kernel")
    try:
        s = spec.structure
        k1, r1, u1, k2, r2, u2 = (s[n] for n in ("k1", "r1", "u1", "k2", "r2", "u2"))
    except (KeyError, ValueError) as e:
        raise CodegenError(f"StructuredFFN spec without a valid structure: {spec.extra}") from e
    if min(spec.d_in, spec.d_ff, spec.d_out, k1, r1, k2, r2) < 1:
        raise CodegenError(f"StructuredFFN dims and blocks must be positive: {spec}")
    for name, whole, k in (("d_in", spec.d_in, k1), ("r1", r1, k1), ("d_ff", spec.d_ff, k2),
                           ("r2", r2, k2)):
        if whole % k:
            raise CodegenError(f"StructuredFFN: {name}={whole} is not a multiple of k={k}")
    m1, s1, m2, s2 = (s.get(n, 0) for n in ("m1", "s1", "m2", "s2"))
    for n, m, sw, r in ((1, m1, s1, r1), (2, m2, s2, r2)):
        if m < 0 or (m and sw < 1):
            raise CodegenError(f"StructuredFFN: bad BlockShuffle blocks m{n}={m} s{n}={sw}")
        if m and r % m:
            raise CodegenError(f"StructuredFFN: r{n}={r} is not a multiple of m{n}={m}")
    w1, w2 = (m1 * s1 if m1 else r1), (m2 * s2 if m2 else r2)
    if (not u1 and w1 != spec.d_ff) or (not u2 and w2 != spec.d_out):
        raise CodegenError("StructuredFFN: a projection without U must end at its output width")


# --- activations: vectorizable TIR expressions of one value ``v`` (a short expression) ---

def _f(c: float) -> str:
    return f"T.float32({c!r})"


def _horner(x: str, coefs: list[float]) -> str:
    e = _f(coefs[0])
    for c in coefs[1:]:
        e = f"({e} * {x} + {_f(c)})"
    return e


_ERF_P = [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02]
_ERF_Q = [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02]
_EXP_P = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1]


def _erf(v: str) -> str:
    x = f"T.max(T.min({v}, T.float32(4)), T.float32(-4))"
    x2 = f"({x} * {x})"
    return f"({x} * {_horner(x2, _ERF_P)} / {_horner(x2, _ERF_Q)})"


def _exp(v: str) -> str:
    x = f"T.max(T.min({v}, T.float32(88)), T.float32(-87))"
    n = f"T.floor({x} * T.float32(1.4426950408889634) + T.float32(0.5))"
    r = f"({x} - {n} * T.float32(0.693359375) + {n} * T.float32(2.12194440e-4))"
    poly = f"({_horner(r, _EXP_P)} * ({r} * {r}) + {r} + T.float32(1))"
    scale = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {n}) + 127, 23))'
    return f"({poly} * {scale})"


def _gelu(v: str) -> str:
    return f"(T.float32(0.5) * {v} * (T.float32(1) + {_erf(f'{v} * T.float32(0.7071067811865476)')}))"


def _gelu_tanh(v: str) -> str:
    u2 = f"(T.float32(-1.5957691216057308) * ({v} + T.float32(0.044715) * {v} * {v} * {v}))"
    return f"({v} / (T.float32(1) + {_exp(u2)}))"


def _silu(v: str) -> str:
    return f"({v} / (T.float32(1) + {_exp(f'(T.float32(0) - {v})')}))"


_ACT = {"relu": lambda v: f"T.max({v}, T.float32(0))", "gelu": _gelu,
        "gelu_tanh": _gelu_tanh, "silu": _silu}


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

    def col_in(self, b: str, j: str) -> str:
        """The input column (of the source row) of row ``j`` of block ``b``."""
        return f"({j}) * {self.k} + {b}" if self.shuffle else f"{b} * {self.p} + {j}"

    def col_out(self, b: str, c: str) -> str:
        """The output column (of the destination row) of column ``c`` of block ``b``."""
        return f"({c}) * {self.k} + {b}" if self.shuffle else f"{b} * {self.q} + {c}"

    def split_out(self, col: str) -> tuple[str, str]:
        """(block, column within the block) of output column ``col`` (inverse of col_out)."""
        if self.shuffle:
            return f"({col} % {self.k})", f"({col} // {self.k})"
        return f"({col} // {self.q})", f"({col} % {self.q})"


def _stages(spec: KernelSpec) -> list[_Stage]:
    """Per projection n: A_n [k, p, q], then S_n (BlockShuffle) and U_n where present; the
    projection's last stage carries its bias (and the first one's the activation). Stage
    i reads scratch H{i} (H0: the padded copy of X) and writes H{i + 1} (the last: Y)."""
    s = spec.structure
    out: list[_Stage] = []

    def projection(n: int, d_in: int, d_out: int, bias: str | None, act: bool, last: bool):
        k, r, m, sw = s[f"k{n}"], s[f"r{n}"], s.get(f"m{n}", 0), s.get(f"s{n}", 0)
        parts = [(f"A{n}", True, k, d_in // k, r // k, False)]
        if m:
            parts.append((f"S{n}", True, m, r // m, sw, True))
        if s[f"u{n}"]:
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


def _widths(spec: KernelSpec) -> dict[str, int]:
    """Row length (floats, padded) of each scratch buffer."""
    widths = {"H0": spec.d_in + PAD}
    for st in _stages(spec):
        widths[st.dst] = st.k * st.q + PAD
    return widths


def _params(spec: KernelSpec) -> str:
    s = spec.structure
    d, f, do, k1, r1, k2, r2 = spec.d_in, spec.d_ff, spec.d_out, s["k1"], s["r1"], s["k2"], s["r2"]

    def buf(name: str, shape: tuple[int, ...]) -> str:
        return f'{name}: T.Buffer({shape!r}, "float32", align=4)'

    m1, s1, m2, s2 = (s.get(n, 0) for n in ("m1", "s1", "m2", "s2"))
    w1, w2 = (m1 * s1 if m1 else r1), (m2 * s2 if m2 else r2)  # rows of U
    shapes = {"X": "x: T.handle", "A1": buf("A1", (k1, d // k1, r1 // k1)),
              "S1": buf("S1", (m1, r1 // max(m1, 1), s1)),
              "U1": buf("U1", (w1, f)), "B1": buf("B1", (f,)),
              "A2": buf("A2", (k2, f // k2, r2 // k2)),
              "S2": buf("S2", (m2, r2 // max(m2, 1), s2)), "U2": buf("U2", (w2, do)),
              "B2": buf("B2", (do,)), "Y": "y: T.handle"}
    return ", ".join(shapes[a] for a in spec.arg_names())


# --- small / batch: column groups, packed panels, register micro-kernel ---

# Pack kc rows of the task's column tiles into pk[tile, row, column] (each weight row is
# read as one contiguous segment of up to G·nr floats).
_PACK = """
for kk in range({KCL}):
    for jt in range({NT}):
        for j in T.vectorized({W}):
            pk[jt, kk, j] = {w}
"""

# The register micro-kernel: acc[mr, W] = init + Σ_kk src[row(ti), kk] · pk[jt, kk, :].
_MICRO = """
for ti in T.unroll({MR}):
    for j in T.vectorized({W}):
        {acc}[ti, j] = {init}
for kk in range({KCL}):
    for ti in T.unroll({MR}):
        for j in T.vectorized({W}):
            {acc}[ti, j] = {acc}[ti, j] + {src} * pk[jt, kk, j]
"""

_STORE = """
for ti in T.unroll({MR}):
    for j in T.vectorized({W}):
        {dst} = {out}
"""

_STORE_GUARDED = """
for ti in T.unroll({MR}):
    if {guard}:
        for j in T.vectorized({W}):
            {dst} = {out}
"""


@dataclass(frozen=True)
class _Rows:
    """How a variant maps a token tile's rows to buffer rows (``{t}``: the tile row)."""

    ntb: str  # token tiles
    scratch: str  # row of a scratch buffer
    y: str  # row of Y
    guard: str  # condition for storing a row of Y


def _kc(p: int, kc_max: int) -> tuple[int, int]:
    """Reduction block length (a multiple of 4 where it can) and the number of blocks."""
    kc = -(-p // -(-p // kc_max))
    kc = min(p, -(-kc // 4) * 4)
    return kc, -(-p // kc)


def _task(spec: KernelSpec, st: _Stage, t: Tiles, rows: _Rows, *, b: str, col0: str,
          nt: str, width: int, acc: str) -> str:
    """One task of a stage: the column tiles ``col0 + jt·nr`` (jt < nt) of block ``b``, for
    every token tile, reduction block by reduction block."""
    kc, nkb = _kc(st.p, t.kc)
    kb = "kb" if nkb > 1 else "0"
    k0 = f"{kb} * {kc}" if nkb > 1 else "0"
    kcl = f"T.min({kc}, {st.p} - {k0})" if st.p % kc else str(kc)
    col = f"{col0} + jt * {t.nr} + j"
    w = (f"{st.w}[{b}, {k0} + kk, {col}]" if st.three_d else f"{st.w}[{k0} + kk, {col}]")
    row = f"tb * {t.mr} + ti"
    ws = _widths(spec)
    src = f"{st.src}[({rows.scratch.format(t=row)}) * {ws[st.src]} + {st.col_in(b, f'{k0} + kk')}]"
    out_col = st.col_out(b, col)  # BlockShuffle: a strided store
    if st.dst == "Y":
        dst = f"Y[{rows.y.format(t=row)}, {out_col}]"
        back = f"Y[T.min({rows.y.format(t=row)}, N - 1), {out_col}]"
    else:
        dst = back = f"{st.dst}[({rows.scratch.format(t=row)}) * {ws[st.dst]} + {out_col}]"
    bias = f"{st.bias}[{out_col}]" if st.bias else "T.float32(0)"
    init = bias if nkb == 1 else f"T.if_then_else(kb == 0, {bias}, {back})"
    value = f"{acc}[ti, j]"
    final = _ACT[spec.activation](value) if st.act else value
    guard = rows.guard.format(t=row) if st.dst == "Y" else None

    def store(out: str) -> str:
        if guard:
            return _STORE_GUARDED.format(MR=t.mr, W=width, dst=dst, out=out, guard=guard)
        return _STORE.format(MR=t.mr, W=width, dst=dst, out=out)

    if nkb == 1 or final == value:
        stores = store(final)
    else:
        stores = (f"if kb == {nkb - 1}:\n{indent(store(final), 4)}\n"
                  f"else:\n{indent(store(value), 4)}")
    micro = _MICRO.format(MR=t.mr, W=width, KCL=kcl, acc=acc, init=init, src=src) + stores
    body = (_PACK.format(KCL=kcl, NT=nt, W=width, w=w).strip("\n")
            + f"\nfor tb in range({rows.ntb}):\n    for jt in range({nt}):\n"
            + indent(micro, 8))
    return f"for kb in range({nkb}):\n{indent(body, 4)}" if nkb > 1 else body


def _stage(spec: KernelSpec, st: _Stage, t: Tiles, rows: _Rows) -> str:
    """One parallel region over the stage's tasks: per block, groups of full column tiles
    (up to ``t.group``, at least ``t.tasks`` tasks where the columns allow), then the
    block's tail tile (``q % nr`` columns) as a task of its own."""
    full, tail = st.q // t.nr, st.q % t.nr
    group = max(1, min(t.group, st.k * full // t.tasks))
    ng = -(-full // group)
    per_block = ng + (1 if tail else 0)
    b, g = (f"(task // {per_block})", f"(task % {per_block})") if st.k > 1 else ("0", "task")
    nt = f"T.min({group}, {full} - {g} * {group})" if full % group else str(group)
    full_task = _task(spec, st, t, rows, b=b, col0=f"{g} * {group * t.nr}", nt=nt,
                      width=t.nr, acc="acc")
    tail_task = _task(spec, st, t, rows, b=b, col0=str(full * t.nr), nt="1", width=tail,
                      acc="acct")
    if tail and full:
        body = f"if {g} < {ng}:\n{indent(full_task, 4)}\nelse:\n{indent(tail_task, 4)}"
    else:
        body = full_task if full else tail_task
    scratch = [f'pk = T.alloc_buffer(({group}, {_kc(st.p, t.kc)[0]}, {t.nr}), "float32", scope="local")',
               f'acc = T.alloc_buffer(({t.mr}, {t.nr}), "float32", scope="local")',
               f'acct = T.alloc_buffer(({t.mr}, {t.nr}), "float32", scope="local")']
    return f"for task in T.parallel({st.k * per_block}):\n" + indent("\n".join([*scratch, body]), 4)


def _columns_source(spec: KernelSpec, t: Tiles) -> str:
    """Stage by stage, each one parallel region over column groups; with ``t.block``,
    over blocks of that many tokens in turn (scratch of one block: bounded memory)."""
    mr = t.mr
    widths = _widths(spec)
    stages = _stages(spec)
    if t.block:
        rows_n: int | str = t.block
        rows = _Rows(ntb="ntb", scratch="{t}", y="r0 + {t}", guard="r0 + {t} < N")
        copy = _copy_x(spec, "T.parallel", f"ntb * {mr}", "T.min(r0 + t, N - 1)")
    else:
        rows_n = f"(N + {mr - 1}) // {mr} * {mr}"
        rows = _Rows(ntb=f"(N + {mr - 1}) // {mr}", scratch="{t}", y="{t}", guard="{t} < N")
        copy = _copy_x(spec, "range", rows_n, "T.min(t, N - 1)")
    head = [f'{name} = T.alloc_buffer((({rows_n}) * {widths[name]},), "float32")'
            for name in ["H0", *sorted({st.dst for st in stages} - {"Y"})]]
    body = [copy.strip("\n")]
    for st in stages:
        body.append(_stage(spec, st, t, rows))
    if t.block:
        body = [f"for blk in range((N + {t.block - 1}) // {t.block}):",
                f"    r0 = blk * {t.block}",
                f"    ntb = (T.min({t.block}, N - r0) + {mr - 1}) // {mr}",
                indent("\n".join(body), 4)]
    return indent("\n".join(head + body), 4)


# X rows 4 KiB apart alias in L1 and are read mr at a time: copy them into padded rows.
_COPY_X = """
for t in {loop}({rows}):
{copy}
"""


def _copy_x(spec: KernelSpec, loop: str, rows: str, x_row: str) -> str:
    stmt = f"H0[t * {_widths(spec)['H0']} + {{i}}] = X[{x_row}, {{i}}]"
    return _COPY_X.format(loop=loop, rows=rows, copy=indent(vector_loop("i", spec.d_in, stmt), 4))


# --- decode / gemv: split-K streaming over whole weight rows ---

def _divisor_parts(p: int, cap: int) -> int:
    """The most row parts ≤ cap that split p rows evenly (1 at worst)."""
    return max(r for r in range(1, max(1, cap) + 1) if p % r == 0)


def _gemv_source(spec: KernelSpec, t: Tiles) -> str:
    """Split-K streaming for few tokens: a stage's task owns a contiguous range of weight
    rows of one block (whole rows: one long sequential read the prefetchers follow) and
    accumulates its share of every output column into private partial sums, ``t.rows``
    weight rows per pass over them. The next stage's task first reduces the partial sums
    of the inputs it owns (plus bias, activation); the last stage's are reduced into Y."""
    stages = _stages(spec)
    rows_n = f"((N + {t.mr - 1}) // {t.mr} * {t.mr})"  # token rows, padded to whole tiles
    parts = [_divisor_parts(st.p, t.tasks // st.k) for st in stages]
    lines = []
    for i, st in enumerate(stages):
        lines.append(f'P{i} = T.alloc_buffer(({st.k * parts[i]} * {rows_n} * {st.q + PAD},), "float32")')
        if i:
            lines.append(f'I{i} = T.alloc_buffer(({st.k * parts[i]} * {rows_n} * {st.p // parts[i]},), "float32")')
    lines.append(f"npad = {rows_n}")  # as a variable (buffer shapes need the expression)
    for i in range(len(stages)):
        lines.append(_gemv_stage(spec, t, stages, parts, i))
    # the last stage's partial sums → Y (+ bias), parallel over (token, block)
    st, R, qs = stages[-1], parts[-1], stages[-1].q + PAD
    terms = " + ".join(f"P{len(stages) - 1}[(((i % {st.k}) * {R} + {r}) * npad + i // {st.k}) * {qs} + {{c}}]"
                       for r in range(R))
    out_col = st.col_out(f"(i % {st.k})", "{c}")
    val = f"{st.bias}[{out_col}] + {terms}" if st.bias else terms
    lines += [f"for i in T.parallel(N * {st.k}):",
              indent(vector_loop("c", st.q, f"Y[i // {st.k}, {out_col}] = {val}"), 4)]
    return indent("\n".join(lines), 4)


def _gemv_stage(spec: KernelSpec, t: Tiles, stages: list[_Stage], parts: list[int], i: int) -> str:
    """Stage ``i`` of the split-K kernel: task = (block b, row part), rows [lo, lo + rows)."""
    st, R, qs, mr, nr = stages[i], parts[i], stages[i].q + PAD, t.mr, t.nr
    rows = st.p // R
    b = f"(task // {R})" if st.k > 1 else "0"
    lo = f"(task % {R}) * {rows}" if R > 1 else "0"
    body = [f"for task in T.parallel({st.k * R}):", "    t0 = task * npad"]
    if i == 0:
        src = f"X[T.min(tb * {mr} + ti, N - 1), {b} * {st.p} + {lo} + {{k}}]"
    else:  # reduce the previous stage's partial sums of this task's inputs
        body += indent(_gemv_inputs(spec, stages[i - 1], parts[i - 1], st, R, i), 4).split("\n")
        src = f"I{i}[(t0 + tb * {mr} + ti) * {rows} + {{k}}]"
    body += ["    for row in range(npad):",
             indent(vector_loop("c", st.q, f"P{i}[(t0 + row) * {qs} + {{c}}] = T.float32(0)"), 8)]
    w = f"{st.w}[{b}, {lo} + {{k}}, {{c}}]" if st.three_d else f"{st.w}[{lo} + {{k}}, {{c}}]"

    def update(ks: list[str]) -> str:
        """P[rows of tile tb, all columns] += Σ_k src[·, k] · w[k, ·] over the rows ks."""
        out = []
        for width, c0, n in ((nr, f"v * {nr}", st.q // nr), (st.q % nr, str(st.q // nr * nr), 1)):
            if width and n:
                c = f"{c0} + j"
                acc = f"P{i}[(t0 + tb * {mr} + ti) * {qs} + {c}]"
                terms = " + ".join(f"{src.format(k=k)} * {w.format(k=k, c=c)}" for k in ks)
                loop = (f"for ti in T.unroll({mr}):\n    for j in T.vectorized({width}):\n"
                        f"        {acc} = {acc} + {terms}")
                out.append(f"for v in range({n}):\n{indent(loop, 4)}" if width == nr else loop)
        return "\n".join(out)

    passes, rem = divmod(rows, t.rows)
    if passes:
        ks = [f"kq * {t.rows} + {j}" for j in range(t.rows)]
        body += [f"    for kq in range({passes}):", f"        for tb in range(npad // {mr}):",
                 indent(update(ks), 12)]
    for j in range(rem):
        body += [f"    for tb in range(npad // {mr}):", indent(update([str(passes * t.rows + j)]), 8)]
    return "\n".join(body)


def _gemv_inputs(spec: KernelSpec, pv: _Stage, rp: int, st: _Stage, R: int, i: int) -> str:
    """I_i[task rows] = act(bias + Σ partial sums of the previous stage ``pv``) for the
    task's inputs: columns b·p + lo + kk of pv's output."""
    rows, qsp = st.p // R, pv.q + PAD
    b = f"(task // {R})" if st.k > 1 else "0"
    lo = f"(task % {R}) * {rows}" if R > 1 else "0"
    starts = [bb * st.p + r * rows for bb in range(st.k) for r in range(R)]
    vector = (not st.shuffle and not pv.shuffle
              and all(a // pv.q == (a + rows - 1) // pv.q for a in starts))
    if vector:  # each task's inputs lie in one block of the previous stage: vector steps
        pb, off = f"(({b} * {st.p} + {lo}) // {pv.q})", f"(({b} * {st.p} + {lo}) % {pv.q} + {{kk}})"
    else:  # general (BlockShuffle: strided inputs or outputs): scalar steps
        pb, off = pv.split_out(f"({st.col_in(b, f'{lo} + {{kk}}')})")
    terms = " + ".join(f"P{i - 1}[(({pb} * {rp} + {r}) * npad + row) * {qsp} + {off}]"
                       for r in range(rp))
    val = f"{pv.bias}[{pv.col_out(pb, off)}] + {terms}" if pv.bias else terms
    stmt = f"I{i}[base + {{kk}}] = {val}"
    lines = ["for row in range(npad):", f"    base = (t0 + row) * {rows}",
             indent(vector_loop("kk", rows, stmt) if vector else
                     "for kk in range({}):\n    {}".format(rows, stmt.replace("{kk}", "kk")), 4)]
    if pv.act:  # in place: the activation repeats its operand, keep that short
        act = _ACT[spec.activation](f"I{i}[base + {{kk}}]")
        lines.append(indent(vector_loop("kk", rows, f"I{i}[base + {{kk}}] = {act}"), 4))
    return "\n".join(lines)


VARIANTS = {"decode": _gemv_source, "gemv": _gemv_source, "small": _columns_source,
            "batch": _columns_source}


def structured_ffn_source(spec: KernelSpec, variant: str, symbol: str,
                          tiles: Tiles | None = None) -> str:
    """TVMScript of one StructuredFFN kernel variant (kept as text: readable, dumpable);
    ``tiles`` overrides the variant's tiling (benchmarks)."""
    check_spec(spec)
    if variant not in VARIANTS:
        raise CodegenError(f"no StructuredFFN variant {variant!r}; have {sorted(VARIANTS)}")
    t = tiles or VARIANT_TILES[variant]
    if min(t.mr, t.nr, t.kc, t.group, t.tasks, t.rows) < 1 or t.block < 0 or t.block % t.mr:
        raise CodegenError(f"bad StructuredFFN tiling {t}")
    head = TOKEN_MAJOR_HEAD.format(params=_params(spec), symbol=symbol, D=spec.d_in, DO=spec.d_out)
    return head + VARIANTS[variant](spec, t) + "\n"


def structured_ffn_primfunc(spec: KernelSpec, variant: str, symbol: str,
                            tiles: Tiles | None = None):
    """The PrimFunc of one variant; arguments in ``spec.arg_names()`` order."""
    return parse(structured_ffn_source(spec, variant, symbol, tiles), symbol)
