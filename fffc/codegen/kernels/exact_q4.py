"""``SparseFFN`` mode=exact, one token, on int4 weights in MatMulNBits' layout (CPUs).

The FFN ``Y = (relu(X·W1 + B1) [⊙ up(X·WU)])·W2 + B2`` (ReLU, ReGLU, dReLU) with every
projection stored as ONNX Runtime's ``MatMulNBits`` stores it (``q4_layout``): W1 and WU as
the nodes hold them (one row of blocks per neuron), W2 re-laid out per neuron
(``q4_layout.columns``). The kernel is exact with respect to the dequantized weights: each
weight is ``(code − zero point) · scale`` as float32, activations stay float32, so the
result equals the float FFN on ``q4_layout.dequantize``'s matrices up to float
reassociation. Per token, gate first:

0. x de-interleaved per block (XE: the inputs of the low nibbles, XO: of the high ones),
   so a vector of code bytes widens to two vectors that meet XE and XO lane by lane;
1. per task of ``nb`` neurons (parallel): the gate of every neuron, ``rows`` rows of W1
   streamed side by side — per block, Σ (code − z)·x over its codes, times the block's
   scale; then, for the neurons whose gate is positive only, the up row's dot with x in the
   same way (the up rows of the others are never read) and the neuron's activation, listed
   (neuron, value) where it is non-zero;
2. the down projection over the listed neurons, split over the outputs (parallel): per
   register tile of ``cw`` outputs, the listed neurons' column codes (16 bytes: 32
   consecutive outputs) scaled by their activation are summed per group of ``block``
   neurons (which share their scales), and each group's sum is multiplied by the group's
   scales once — the scales of a group without a listed neuron are never read.

With ``Q4Dot.INT8`` the gate and up dots run on x quantized to int8 per block, as ONNX
Runtime's ``accuracy_level`` 4 computes: integer products (AVX-512 VNNI on x86, ``sdot`` on
aarch64 CPUs with dotprod), the float FFN only up to x's rounding (and a neuron whose gate
is within that rounding of 0 may be decided otherwise than in float). A format with
``int8_x`` (SparseFFN's ``accuracy_level`` 4) computes that function with either dots: the
float32 ones then read x rounded and scaled back, for CPUs without the int8 dot.

The kernel is one TIR for every CPU family: LLVM vectorizes its loops at the target's width
(AVX2, AVX-512, NEON), and the few instructions it names (the int8 dot, the float32
register permute) come from the family's ``Q4Isa`` (``ISAS``); the tiling
(``q4_tiling``) follows the target's vector width.

Skipped neurons cost nothing beyond their gate. The compile builds it for SparseFFN's
``bits`` 4 (each CPU family's ``Q4Plan``: ``schedules/``), the shim passing the op's int4
inputs in ``q4_arg_names`` order.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from dataclasses import dataclass, replace
from enum import StrEnum

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import TargetFamily

from .._tvm import T
from ..q4_layout import CHUNK, SYMMETRIC_ZERO_POINT, Q4Format
from .pieces import activation, bias, folds, largest_divisor, with_args
from .sparse_ffn import check_spec

INT4 = "int4"  # the kernel variant's name (one variant serves every token count)
CODE_LANES = 16  # code bytes widened per vector step (a block of 32 is one step)
STEP_BYTES = 64  # int8 dots: code bytes per step
I8_LANES = 16  # int8 dots: int32 lanes per step, each the sum of 4 bytes' products
LUT_LANES = 16


@dataclass(frozen=True)
class Q4Isa:
    """The target-specific instructions the kernel names; everything else is portable TIR
    that LLVM vectorizes at the target's width. ``dot``: int32 lanes += the sums of 4
    adjacent byte products (codes 0..15 times int8 x: the same with unsigned or signed
    first operands), on operands of ``dot_bytes`` bytes; an int8 step of STEP_BYTES runs
    STEP_BYTES / dot_bytes of them."""

    dot_name: str  # for messages
    dot: str  # the LLVM intrinsic
    dot_bytes: int
    dot_operand: str  # its byte operands' type as LLVM (22) declares them
    dot_features: tuple[str, ...]  # the LLVM CPU features it needs
    permute: str | None  # (16 floats, 16 int32 indices: low 4 bits) → 16 floats, or None

    @property
    def dot_lanes(self) -> int:
        return self.dot_bytes // 4


X86_ISA = Q4Isa(dot_name="AVX-512 VNNI", dot="llvm.x86.avx512.vpdpbusd.512",  # u8 · s8
                dot_bytes=64, dot_operand="int8x64", dot_features=("avx512f", "avx512vnni"),
                permute="llvm.x86.avx512.permvar.sf.512")
ARM_ISA = Q4Isa(dot_name="dotprod (sdot)", dot="llvm.aarch64.neon.sdot.v4i32.v16i8",  # s8 · s8
                dot_bytes=16, dot_operand="int8x16", dot_features=("dotprod",), permute=None)
ISAS = {TargetFamily.X86: X86_ISA, TargetFamily.ARM: ARM_ISA}  # per CPU family


PREFETCH = "llvm.prefetch.p0"
LINE = 64  # bytes of a cache line


def prefetch(load) -> None:
    """Emit a read prefetch (into all cache levels) of the address of ``load``."""
    T.evaluate(T.call_llvm_intrin("void", PREFETCH, T.address_of(load), T.int32(0), T.int32(3),
                                  T.int32(1)))


def int8_dot(isa: Q4Isa, acc, a, b):
    """acc (int32 × ``isa.dot_lanes``) + the sums of 4 adjacent byte products a · b (both
    given as int32 lanes)."""
    op = isa.dot_operand
    return T.call_llvm_pure_intrin(f"int32x{isa.dot_lanes}", isa.dot, acc, T.reinterpret(op, a),
                                   T.reinterpret(op, b))


class Q4Dot(StrEnum):
    """How the gate and up rows' dot products with x are computed."""

    FLOAT32 = "float32"  # x in float32 times (code − zero point) converted: the float FFN
    # on the dequantized weights, up to reassociation
    INT8 = "int8"  # x quantized to int8 per block (scale max|x| / 127, ONNX Runtime's
    # accuracy_level 4), integer dot products (Q4Isa.dot: AVX-512 VNNI, aarch64 sdot)


@dataclass(frozen=True)
class Q4Tiling:
    """Loop tiling of the int4 exact kernel."""

    nb: int  # neurons per phase-1 task (divides d_ff, a multiple of rows)
    rows: int  # W1 / WU rows streamed side by side (independent accumulators)
    parts: int  # phase-2 tasks over d_out
    cw: int  # outputs per phase-2 register tile (a multiple of CHUNK)
    parallel: bool = True  # False: serial loops (tiny shapes)
    ahead: int = 16  # phase 2: the column codes of the neuron listed this far ahead are
    # prefetched (each tile reads one short piece of every listed column: latency-bound)
    scales_ahead: bool = True  # ... and the scales of its group where that group starts
    up_ahead: int = 4  # phase 1: lines prefetched of the next up rows (then the hardware
    # prefetcher follows each row)
    lut: bool = False  # float32 dots of symmetric codes: code − 8 as float looked up by a
    # 16-entry register permute (Q4Isa.permute: AVX-512 vpermps) instead of mask, subtract,
    # convert; ignored where the target has no such permute


ROWS = 4
TASKS = 32  # phase-1 tasks at most: load balance over the threads
PARTS = 4  # phase-2 tasks at most
SERIAL_MAX_MACS = 1 << 16


def plan_dot(spec: SparseSpec, int8_dots: bool) -> Q4Dot:
    """The dots of ``spec``'s kernel on a CPU that has the int8 dot or not: int8 where x is
    rounded to int8 anyway (``spec.int8_x``) and the kernel takes them (d_in a multiple of
    two steps), else float32."""
    if spec.int8_x and int8_dots and spec.d_in % (2 * STEP_BYTES) == 0:
        return Q4Dot.INT8
    return Q4Dot.FLOAT32


@dataclass(frozen=True)
class Q4Plan:
    """A schedule family's int4 exact variant: its tiling, its CPU family's instructions
    and the dots it computes (what ``exact_q4_primfunc`` takes besides the spec)."""

    tiling: Q4Tiling
    isa: Q4Isa
    dot: Q4Dot = Q4Dot.FLOAT32


def q4_tiling(spec: SparseSpec, lanes: int) -> Q4Tiling:
    """The tiling for a CPU with ``lanes`` float32 per vector register: phase 2 keeps
    2·cw/lanes vector accumulators (a group's sum and the tile's total), wide tiles
    (fewer passes over the list) measured best even where some of them spill."""
    cap = max(CHUNK, 16 * lanes)
    cw = CHUNK * largest_divisor(spec.d_out // CHUNK, cap // CHUNK)
    # d_ff is a multiple of the block (≥ 16), so nb ≥ ROWS
    nb = largest_divisor(spec.d_ff, max(ROWS, spec.d_ff // TASKS))
    return Q4Tiling(nb=nb, rows=ROWS, parts=largest_divisor(spec.d_out // cw, PARTS), cw=cw,
                    parallel=spec.d_in * spec.d_ff >= SERIAL_MAX_MACS, lut=lanes >= LUT_LANES)


def int4_spec(spec: SparseSpec, fmt: Q4Format) -> SparseSpec:
    """``spec`` with int4 weights stored as ``fmt`` says."""
    return replace(spec, bits=4, block=fmt.block, zero_points=fmt.zero_points)


def q4_arg_names(spec: SparseSpec, fmt: Q4Format) -> list[str]:
    """The kernel's arguments: each projection as codes, scales (S) and, with zero points, Z
    (SparseSpec's int4 argument order)."""
    return int4_spec(spec, fmt).arg_names()


def check_int4_shapes(spec: SparseSpec, fmt: Q4Format) -> None:
    """Raise CodegenError for an FFN the int4 exact kernels (every target's) cannot take."""
    check_spec(spec)  # exact, ReLU gate, the up activations
    if spec.d_in % fmt.block or spec.d_ff % fmt.block:
        raise CodegenError(f"int4 kernel: d_in {spec.d_in} and d_ff {spec.d_ff} must be "
                           f"multiples of the block {fmt.block}")
    if spec.d_out % CHUNK:
        raise CodegenError(f"int4 kernel: d_out {spec.d_out} must be a multiple of {CHUNK}")


def check_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for shapes the int4 exact kernel cannot compute."""
    check_int4_shapes(spec, fmt)
    t = tiling
    if spec.d_ff % t.nb or t.nb % t.rows or t.cw % CHUNK or spec.d_out % (t.parts * t.cw):
        raise CodegenError(f"int4 kernel: tiling {t} does not divide {spec}")
    if dot is Q4Dot.INT8 and spec.d_in % (2 * STEP_BYTES):
        raise CodegenError(f"int4 kernel, int8 dots: d_in {spec.d_in} must be a multiple of "
                           f"{2 * STEP_BYTES}")


def exact_q4_primfunc(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, symbol: str,
                      dot: Q4Dot = Q4Dot.FLOAT32, isa: Q4Isa = X86_ISA):
    """The PrimFunc of the int4 exact kernel for a CPU of ``isa`` (``ISAS``: its family's);
    arguments ``q4_arg_names(spec, fmt)``. ``dot`` INT8 needs a target with
    ``isa.dot_features``."""
    dot = Q4Dot(dot)
    check_q4(spec, fmt, tiling, dot)
    t = tiling
    D, F, DO, BLK = spec.d_in, spec.d_ff, spec.d_out, fmt.block
    KB, BB = D // BLK, BLK // 2  # blocks of a row, code bytes of a block
    KZ = -(-KB // 2)  # zero point bytes of a row
    VB = min(BB, CODE_LANES)
    NCH = BB // VB  # vector steps per block
    G = F // BLK  # groups of neurons sharing the down projection's scales
    NB, NFB, R = t.nb, F // t.nb, t.rows
    P, CW, DOP, AHEAD = t.parts, t.cw, DO // t.parts, t.ahead
    SCALES_AHEAD = t.scales_ahead
    UP_AHEAD = min(t.up_ahead, KB * BB // LINE)
    HALF = CHUNK // 2
    loop = T.parallel if t.parallel else T.serial
    gated, up = spec.gated, activation(spec.up_activation)
    INT8 = dot is Q4Dot.INT8
    QX = fmt.int8_x  # x rounded to int8 per block (INT8 dots always compute so)
    AL = I8_LANES if INT8 else VB  # accumulator lanes of a row dot
    NS = KB * BB // STEP_BYTES if INT8 else 1  # int8 steps of a row
    NXQ, NXF = (KB * BB, 1) if INT8 else (1, KB * BB)  # x's int8 / float copies (1: unused)
    LUT = t.lut and not fmt.zero_points and VB == LUT_LANES and isa.permute is not None
    DOTS, DL = STEP_BYTES // isa.dot_bytes, isa.dot_lanes  # int8 dots per step, their lanes
    XZ = 1 if fmt.zero_points else SYMMETRIC_ZERO_POINT  # XCOR: −XZ · Σ (int8 dots)

    def zero_point(WZ, row, kb):
        """The zero point of block kb of ``row`` (int32)."""
        if WZ is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return (T.Cast("int32", WZ[row, kb // 2]) >> ((kb % 2) * 4)) & 15

    def dots_f32(acc, W, WS, WZ, xs, row, nrows):
        """acc[r, 0] = Σ_k x_k · W[k, row(r)] for r < nrows: per block, the widened codes
        minus the zero point times XE / XO, summed, times the block's scale."""
        XE, XO = xs[:2]
        if LUT:
            dots_lut(acc, W, WS, XE, XO, row, nrows)
            return
        for r in range(nrows):
            with T.vectorized(VB) as v:
                T.buffer_store(acc, T.float32(0), [r, v])
        with T.serial(KB) as kb:
            for r in range(nrows):
                n = row(r)
                z = zero_point(WZ, n, kb)
                with T.vectorized(VB) as v:
                    part = None
                    for ch in range(NCH):
                        code = T.Cast("int32", W[n, kb, ch * VB + v])
                        i = kb * BB + ch * VB + v
                        term = (T.Cast("float32", (code & 15) - z) * XE[i]
                                + T.Cast("float32", (code >> 4) - z) * XO[i])
                        part = term if part is None else part + term
                    T.buffer_store(acc, acc[r, v] + WS[n, kb] * part, [r, v])
        folds([acc], VB, rows=nrows)

    def dots_lut(acc, W, WS, XE, XO, row, nrows):
        """``dots_f32`` for symmetric codes, 16 lanes: code − 8 as float by a register
        permute of the table [−8, …, 7] (the permute reads the index's low 4 bits, so the
        high nibble needs only a shift)."""
        lanes = T.ramp(0, 1, LUT_LANES)
        table = T.Cast("float32x16", T.ramp(-SYMMETRIC_ZERO_POINT, 1, LUT_LANES))
        for r in range(nrows):
            T.buffer_store(acc, T.broadcast(T.float32(0), LUT_LANES), [r, lanes])
        with T.serial(KB) as kb:
            for r in range(nrows):
                n = row(r)
                part = None
                for ch in range(NCH):
                    b = T.Cast("int32x16", W.vload([n, kb, ch * LUT_LANES], "uint8x16"))
                    i = kb * BB + ch * LUT_LANES
                    term = (T.call_llvm_pure_intrin("float32x16", isa.permute, table, b)
                            * XE.vload([i], "float32x16")
                            + T.call_llvm_pure_intrin("float32x16", isa.permute, table, b >> 4)
                            * XO.vload([i], "float32x16"))
                    part = term if part is None else part + term
                T.buffer_store(acc, acc[r, lanes] + T.broadcast(WS[n, kb], LUT_LANES) * part,
                               [r, lanes])
        folds([acc], LUT_LANES, rows=nrows)

    def lane_zero_points(WZ, n, blk, nbv):
        """int32 × DL: lane l the zero point of block blk + 4l / BB of row n (a slice of nbv
        blocks from blk, even where nbv > 1; two zero points a byte)."""
        if nbv == 1:
            return T.broadcast(zero_point(WZ, n, blk), DL)
        nz = nbv // 2
        block = [4 * lane // BB for lane in range(DL)]
        if nz == 1:
            packed = T.broadcast(T.Cast("int32", WZ[n, blk // 2]), DL)
        else:
            zb = T.Cast(f"int32x{nz}", WZ.vload([n, blk // 2], f"uint8x{nz}"))
            packed = T.Shuffle([zb] * (DL // nz), [b // 2 for b in block])
        # the high nibble for odd blocks: lanes of a [0] * DL/2 + [4] * DL/2 vector
        half = DL // 2
        shift = T.Shuffle([T.broadcast(T.int32(0), half), T.broadcast(T.int32(4), half)],
                          [(b % 2) * half for b in block])
        return (packed >> shift) & T.broadcast(T.int32(15), DL)

    def dots_i8(acc, W, WS, WZ, xs, row, nrows):
        """acc[r, 0] ≈ Σ_k x_k · W[k, row(r)] with x quantized per block (XEQ, XOQ: int8,
        XSC: their scales per lane, XCOR: −XZ · Σ of each lane's 8 quantized inputs): per
        STEP_BYTES code bytes, I8_LANES int32 lanes of 4 bytes each, DOTS slices of DL lanes
        (one dot instruction's operands) each accumulated by two dots (low nibbles · XEQ,
        high nibbles · XOQ) onto XCOR (times the lane's block's zero point where the
        weights have them: Σ (code − z)·xq = Σ code·xq − z·Σ xq), converted and scaled by
        the lane's block's weight and input scales."""
        XEQ, XOQ, XCOR, XSC = xs[2:]
        lanes = T.ramp(0, 1, I8_LANES)
        mask = T.broadcast(T.int32(0x0F0F0F0F), DL)
        nbv = max(1, isa.dot_bytes // BB)  # blocks per dot
        for r in range(nrows):
            T.buffer_store(acc, T.broadcast(T.float32(0), I8_LANES), [r, lanes])
        with T.serial(NS) as st:
            for s in range(DOTS):
                # byte and lane offsets of slice s (no "+ 0": one slice is the whole step)
                ob = st * STEP_BYTES + s * isa.dot_bytes if s else st * STEP_BYTES
                ol = st * I8_LANES + s * DL if s else st * I8_LANES
                sl = T.ramp(s * DL, 1, DL) if DOTS > 1 else lanes
                xe = T.reinterpret(f"int32x{DL}", XEQ.vload([ob], f"int8x{isa.dot_bytes}"))
                xo = T.reinterpret(f"int32x{DL}", XOQ.vload([ob], f"int8x{isa.dot_bytes}"))
                cor = XCOR.vload([ol], f"int32x{DL}")
                xsc = XSC.vload([ol], f"float32x{DL}")
                for r in range(nrows):
                    n = row(r)
                    w = T.reinterpret(f"int32x{DL}",
                                      W.vload([n, ob // BB, ob % BB], f"uint8x{isa.dot_bytes}"))
                    c0 = cor if WZ is None else lane_zero_points(WZ, n, ob // BB, nbv) * cor
                    d = int8_dot(isa, int8_dot(isa, c0, w & mask, xe), (w >> 4) & mask, xo)
                    if nbv > 1:  # the slice's first block (BB divides the offsets)
                        blk = st * (STEP_BYTES // BB) + s * nbv if s else st * (STEP_BYTES // BB)
                        sv = WS.vload([n, blk], f"float32x{nbv}")
                        # lane l: block 4l / BB of the slice (copies of sv: a shuffle takes
                        # as many lanes as it gives)
                        sw = T.Shuffle([sv] * (DL // nbv), [4 * lane // BB for lane in range(DL)])
                    else:
                        sw = T.broadcast(WS[n, ob // BB], DL)
                    T.buffer_store(acc, acc[r, sl] + T.Cast(f"float32x{DL}", d) * (sw * xsc),
                                   [r, sl])
        folds([acc], I8_LANES, rows=nrows)

    dots = dots_i8 if INT8 else dots_f32

    def down_zero_point(W2Z, g, col):
        if W2Z is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return T.Cast("int32", W2Z[g, col])

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, KB, BB), "uint8", align=4),
               W1S: T.Buffer((F, KB), "float32", align=4),
               W1Z: T.Optional(T.Buffer((F, KZ), "uint8", align=4)),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO // 2), "uint8", align=4),
               W2S: T.Buffer((G, DO), "float32", align=4),
               W2Z: T.Optional(T.Buffer((G, DO), "uint8", align=4)),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((F, KB, BB), "uint8", align=4)),
               WUS: T.Optional(T.Buffer((F, KB), "float32", align=4)),
               WUZ: T.Optional(T.Buffer((F, KZ), "uint8", align=4)), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        XE = T.alloc_buffer((NXF,), "float32")
        XO = T.alloc_buffer((NXF,), "float32")
        XEQ = T.alloc_buffer((NXQ,), "int8")
        XOQ = T.alloc_buffer((NXQ,), "int8")
        XCOR = T.alloc_buffer((NS * I8_LANES,), "int32")
        XSC = T.alloc_buffer((NS * I8_LANES,), "float32")
        CAND = T.alloc_buffer((F,), "int32")
        IDX = T.alloc_buffer((F,), "int32")
        VAL = T.alloc_buffer((F,), "float32")
        CNT = T.alloc_buffer((NFB,), "int32")
        LIDX = T.alloc_buffer((F + 1,), "int32")
        LVAL = T.alloc_buffer((F,), "float32")
        xs = T.meta_var((XE, XO, XEQ, XOQ, XCOR, XSC))
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            if INT8:
                # x per block: scale max|x| / 127, codes round(x / scale) de-interleaved
                sx = T.alloc_buffer((KB,), "float32", scope="local")
                for kb in range(KB):
                    am = T.alloc_buffer((1,), "float32", scope="local")
                    am[0] = T.float32(0)
                    for k in range(BLK):
                        am[0] = T.max(am[0], T.fabs(X[tb, kb * BLK + k]))
                    sx[kb] = am[0] / T.float32(127)
                    inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                    for i in range(BB):
                        XEQ[kb * BB + i] = T.Cast("int8", T.nearbyint(X[tb, kb * BLK + 2 * i] * inv))
                        XOQ[kb * BB + i] = T.Cast("int8", T.nearbyint(X[tb, kb * BLK + 2 * i + 1] * inv))
                for st in range(NS):
                    for ln in range(I8_LANES):
                        XSC[st * I8_LANES + ln] = sx[(st * STEP_BYTES + 4 * ln) // BB]
                        XCOR[st * I8_LANES + ln] = T.int32(0)
                        for m in range(4):
                            XCOR[st * I8_LANES + ln] = XCOR[st * I8_LANES + ln] - XZ * (
                                T.Cast("int32", XEQ[st * STEP_BYTES + 4 * ln + m])
                                + T.Cast("int32", XOQ[st * STEP_BYTES + 4 * ln + m]))
            elif QX:
                # float dots on x rounded to int8 per block as above, scaled back (q · s)
                for kb in range(KB):
                    am = T.alloc_buffer((1,), "float32", scope="local")
                    am[0] = T.float32(0)
                    for k in range(BLK):
                        am[0] = T.max(am[0], T.fabs(X[tb, kb * BLK + k]))
                    inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                    for i in range(BB):
                        XE[kb * BB + i] = T.nearbyint(X[tb, kb * BLK + 2 * i] * inv) * (
                            am[0] / T.float32(127))
                        XO[kb * BB + i] = T.nearbyint(X[tb, kb * BLK + 2 * i + 1] * inv) * (
                            am[0] / T.float32(127))
            else:
                for kb in range(KB):
                    for i in range(BB):
                        XE[kb * BB + i] = X[tb, kb * BLK + 2 * i]
                        XO[kb * BB + i] = X[tb, kb * BLK + 2 * i + 1]
            # Phase 1: gates, then the up rows of the positive ones, listed activations.
            for fb in loop(NFB):
                acc = T.alloc_buffer((R, AL), "float32", scope="local")
                gate = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((2,), "int32", scope="local")
                for r4 in range(NB // R):
                    dots(acc, W1, W1S, W1Z, xs, lambda r: fb * NB + r4 * R + r, R)  # noqa: B023 (called while parsing)
                    for r in T.unroll(R):
                        gate[r4 * R + r] = acc[r, 0] + bias(B1, fb * NB + r4 * R + r)
                n[1] = 0
                if gated:
                    n[0] = 0
                    for fl in range(NB):
                        if gate[fl] > T.float32(0):
                            CAND[fb * NB + n[0]] = fl
                            n[0] = n[0] + 1
                    for q4 in range(n[0] // R):
                        if UP_AHEAD > 0:
                            for r in T.unroll(R):
                                jn = fb * NB + CAND[fb * NB + T.min((q4 + 1) * R + r, n[0] - 1)]
                                for ln in T.unroll(UP_AHEAD):
                                    prefetch(WU[jn, ln * LINE // BB, 0])
                        dots(acc, WU, WUS, WUZ, xs, lambda r: fb * NB + CAND[fb * NB + q4 * R + r], R)  # noqa: B023
                        for r in range(R):
                            fl = CAND[fb * NB + q4 * R + r]
                            a = gate[fl] * up(acc[r, 0])
                            if a != T.float32(0):
                                IDX[fb * NB + n[1]] = fb * NB + fl
                                VAL[fb * NB + n[1]] = a
                                n[1] = n[1] + 1
                    for q in range(n[0] // R * R, n[0]):
                        dots(acc, WU, WUS, WUZ, xs, lambda r: fb * NB + CAND[fb * NB + q], 1)  # noqa: B023
                        fl = CAND[fb * NB + q]
                        a = gate[fl] * up(acc[0, 0])
                        if a != T.float32(0):
                            IDX[fb * NB + n[1]] = fb * NB + fl
                            VAL[fb * NB + n[1]] = a
                            n[1] = n[1] + 1
                else:
                    for fl in range(NB):
                        if gate[fl] > T.float32(0):
                            IDX[fb * NB + n[1]] = fb * NB + fl
                            VAL[fb * NB + n[1]] = gate[fl]
                            n[1] = n[1] + 1
                CNT[fb] = n[1]
            c[0] = 0
            for fb in range(NFB):
                for q in range(CNT[fb]):
                    LIDX[c[0] + q] = IDX[fb * NB + q]
                    LVAL[c[0] + q] = VAL[fb * NB + q]
                c[0] = c[0] + CNT[fb]
            LIDX[c[0]] = F  # a sentinel in no group: the last group's sum is applied
            # Phase 2: per tile of outputs, the listed neurons' columns, summed per group.
            for p in loop(P):
                tot = T.alloc_buffer((CW,), "float32", scope="local")
                grp = T.alloc_buffer((CW,), "float32", scope="local")
                for cc in range(DOP // CW):
                    for i in T.vectorized(CW):
                        tot[i] = T.float32(0)
                        grp[i] = T.float32(0)
                    for q in range(c[0]):
                        j = LIDX[q]
                        a = LVAL[q]
                        g = j // BLK
                        if AHEAD > 0:
                            jn = LIDX[T.min(q + AHEAD, c[0] - 1)]
                            for ln in T.unroll(CW // 2 // LINE):
                                prefetch(W2[jn, (p * DOP + cc * CW) // 2 + ln * LINE])
                            if SCALES_AHEAD:  # noqa: SIM102 (a parse-time choice around a TIR if)
                                if jn // BLK != LIDX[T.min(q + AHEAD - 1, c[0] - 1)] // BLK:
                                    for ln in T.unroll(CW * 4 // LINE):
                                        prefetch(W2S[jn // BLK, p * DOP + cc * CW + ln * (LINE // 4)])
                        for h in T.unroll(CW // CHUNK):
                            for v in T.vectorized(HALF):
                                # meta_var: no scalar binding inside the vector loop
                                code = T.meta_var(T.Cast("int32", W2[j, (p * DOP + cc * CW + h * CHUNK) // 2 + v]))
                                col = T.meta_var(p * DOP + cc * CW + h * CHUNK + v)
                                grp[h * CHUNK + v] = grp[h * CHUNK + v] + a * T.Cast(
                                    "float32", (code & 15) - down_zero_point(W2Z, g, col))
                                grp[h * CHUNK + HALF + v] = grp[h * CHUNK + HALF + v] + a * T.Cast(
                                    "float32", (code >> 4) - down_zero_point(W2Z, g, col + HALF))
                        if LIDX[q + 1] // BLK != g:
                            for i in T.vectorized(CW):
                                tot[i] = tot[i] + W2S[g, p * DOP + cc * CW + i] * grp[i]
                                grp[i] = T.float32(0)
                    for i in T.vectorized(CW):
                        Y[tb, p * DOP + cc * CW + i] = tot[i] + bias(B2, p * DOP + cc * CW + i)

    return with_args(kernel, q4_arg_names(spec, fmt))


def q4_inputs(spec: SparseSpec, w1, w2, wu=None, b1=None, b2=None) -> dict:
    """The kernel's inputs by argument name from ``q4_layout`` records: ``w1``, ``wu`` as
    MatMulNBits holds them (Q4Matrix, N = d_ff), ``w2`` re-laid out (Q4Columns)."""
    out = {"W1": w1.codes, "W1S": w1.scales, "W1Z": w1.zero_points, "B1": b1,
           "W2": w2.codes, "W2S": w2.scales, "W2Z": w2.zero_points, "B2": b2}
    if spec.gated:
        out.update(WU=wu.codes, WUS=wu.scales, WUZ=wu.zero_points)
    return out
