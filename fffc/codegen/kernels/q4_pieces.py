"""Shared pieces of the int4 SparseFFN kernels (``exact_q4``, ``teal_q4``, ``cats_q4``,
``predictor_q4``) on weights in MatMulNBits' layout (``q4_layout``), for every CPU family.

Two ways of reading an int4 projection recur in every mode:

* **row dots** (``row_dots``): the dot products of x with a few rows of a projection kept as
  MatMulNBits stores it (one row of blocks per neuron: a gate or up projection read per
  neuron). x is first loaded once per token (``RowDots.load_x``): de-interleaved per block
  (XE: the inputs of the low nibbles, XO: of the high ones), so a vector of code bytes widens
  to two vectors that meet XE and XO lane by lane; or, for ``Q4Dot.INT8``, quantized to int8
  per block as ONNX Runtime's ``accuracy_level`` 4 does (integer products: the family's
  ``Q4Isa.dot``, AVX-512 VNNI on x86, ``sdot`` on aarch64 with dotprod); or, for a format
  with ``int8_x`` and float32 dots, rounded so and scaled back;
* **column passes** (``column_pass``): ``out = Σ_q v_q · W[j_q, :]`` over a list of
  (row j, value v) pairs sorted by j, on a projection re-laid out per row
  (``q4_layout.columns``: a down projection per neuron, or a gate / up projection per input
  channel), split over the outputs. Per register tile of ``cw`` outputs, the listed rows'
  codes (16 bytes: 32 consecutive outputs) scaled by their value are summed per group of
  ``block`` rows (which share their scales), and each group's sum is multiplied by the
  group's scales once: the scales of a group without a listed row are never read;
  ``column_pass_i8`` does the same with the values quantized to int8 per group, four rows
  per int8 dot lane.

Every weight is ``(code − zero point) · scale`` as float32 (nothing is requantized), so
float32 dots equal the float computation on ``q4_layout.dequantize``'s matrices up to float
reassociation. The few instructions the pieces name (the int8 dot, the float32 register
permute) come from the CPU family's ``Q4Isa`` (``ISAS``); everything else is portable TIR
that LLVM vectorizes at the target's width.
"""

# No ``from __future__ import annotations``: ``T.macro`` reads its closure as objects.

from dataclasses import dataclass
from enum import StrEnum

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode, TargetFamily

from .._tvm import T
from ..q4_layout import CHUNK, SYMMETRIC_ZERO_POINT, Q4Format
from .pieces import bias, check_activations, folds

CODE_LANES = 16  # code bytes widened per vector step (a block of 32 is one step)
STEP_BYTES = 64  # int8 dots: code bytes per step
I8_LANES = 16  # int8 dots: int32 lanes per step, each the sum of 4 bytes' products
LUT_LANES = 16


@dataclass(frozen=True)
class Q4Isa:
    """The target-specific instructions the kernels name; everything else is portable TIR
    that LLVM vectorizes at the target's width. ``dot``: int32 lanes += the sums of 4
    adjacent byte products (codes 0..15 times int8 values: the same with unsigned or signed
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
    """How an int4 kernel's products of weights and activations are computed."""

    FLOAT32 = "float32"  # activations in float32 times (code − zero point) converted: the
    # float FFN on the dequantized weights, up to reassociation
    INT8 = "int8"  # activations quantized to int8 per block (scale max|v| / 127, ONNX
    # Runtime's accuracy_level 4), integer dot products (Q4Isa.dot: AVX-512 VNNI, aarch64
    # sdot). Which activations is the kernel's to say: x in the row dots (exact, cats,
    # predictor); x' and a' in both column passes (teal)


def q4_inputs(spec: SparseSpec, w1, w2, wu=None, b1=None, b2=None, **extra) -> dict:
    """The kernel's inputs by argument name from ``q4_layout`` records (``Q4Matrix`` where
    the kernel reads the projection per neuron, ``Q4Columns`` where it reads it per row);
    ``extra``: the mode's inputs by name (TH, PA, PB, PC)."""
    out = {"W1": w1.codes, "W1S": w1.scales, "W1Z": w1.zero_points, "B1": b1,
           "W2": w2.codes, "W2S": w2.scales, "W2Z": w2.zero_points, "B2": b2}
    if spec.gated:
        out.update(WU=wu.codes, WUS=wu.scales, WUZ=wu.zero_points)
    out.update(extra)
    return out


def check_q4_shapes(spec: SparseSpec, fmt: Q4Format) -> None:
    """Raise CodegenError for shapes no int4 kernel takes (MatMulNBits' blocks along d_in
    and d_ff; the re-laid-out down projection's chunks along d_out)."""
    if spec.d_in % fmt.block or spec.d_ff % fmt.block:
        raise CodegenError(f"int4 kernel: d_in {spec.d_in} and d_ff {spec.d_ff} must be "
                           f"multiples of the block {fmt.block}")
    if spec.d_out % CHUNK:
        raise CodegenError(f"int4 kernel: d_out {spec.d_out} must be a multiple of {CHUNK}")


def check_q4_mode(spec: SparseSpec, mode: SparseMode) -> None:
    """Raise CodegenError unless ``spec`` is a SparseFFN ``mode`` spec an int4 kernel of
    that mode takes (activations with kernels, float32 activations, no centers)."""
    if not isinstance(spec, SparseSpec) or spec.mode is not mode:
        raise CodegenError(f"not a SparseFFN mode={mode} spec: {spec}")
    check_activations(f"SparseFFN {mode}", spec.activation, spec.up_activation)
    if spec.up_activation != "none" and not spec.gated:
        raise CodegenError("SparseFFN up_activation needs a gated FFN (input WU)")
    if spec.centers:
        raise CodegenError(f"int4 {mode} kernel: centered inputs (XC, HC) are not supported")
    if spec.dtype != "float32":
        raise CodegenError(f"int4 kernels take float32 activations, got {spec.dtype!r}")


def check_int8_dots(spec: SparseSpec) -> None:
    """Raise CodegenError where ``Q4Dot.INT8`` row dots cannot run."""
    if spec.d_in % (2 * STEP_BYTES):
        raise CodegenError(f"int4 kernel, int8 dots: d_in {spec.d_in} must be a multiple of "
                           f"{2 * STEP_BYTES}")


@dataclass(frozen=True)
class RowDots:
    """The row dots of one kernel (``row_dots``): ``dots(acc, W, WS, WZ, xs, row, nrows)``
    emits acc[r, 0] = Σ_k x_k · W[k, row(r)] for r < nrows (acc: [nrows, lanes] local);
    ``load_x(xval, xs)`` (a macro) loads the token's x (``xval(k)``: its k-th entry) into
    the buffers ``xs`` = (XE, XO, XEQ, XOQ, XCOR, XSC), allocated by the kernel with the
    shapes ``nxf``, ``nxq``, ``ns`` give."""

    dots: object
    load_x: object
    lanes: int  # accumulator lanes of a row dot
    nxf: int  # entries of XE and XO (1: unused)
    nxq: int  # entries of XEQ and XOQ (1: unused)
    ns: int  # int8 steps of a row (XCOR and XSC hold ns · I8_LANES)


def row_dots(d_in: int, fmt: Q4Format, dot: Q4Dot, lut: bool, isa: Q4Isa) -> RowDots:
    """The row dots over rows of ``d_in`` inputs stored as ``fmt`` on a CPU of ``isa``;
    ``lut``: float32 dots of symmetric codes look code − 8 up by a 16-entry register permute
    (where ``isa`` has one)."""
    D, BLK = d_in, fmt.block
    KB, BB = D // BLK, BLK // 2  # blocks of a row, code bytes of a block
    VB = min(BB, CODE_LANES)
    NCH = BB // VB  # vector steps per block
    INT8 = dot is Q4Dot.INT8
    QX = fmt.int8_x  # x rounded to int8 per block (INT8 dots always compute so)
    NS = KB * BB // STEP_BYTES if INT8 else 1  # int8 steps of a row
    NXQ, NXF = (KB * BB, 1) if INT8 else (1, KB * BB)  # x's int8 / float copies (1: unused)
    LUT = lut and not fmt.zero_points and VB == LUT_LANES and isa.permute is not None
    DOTS, DL = STEP_BYTES // isa.dot_bytes, isa.dot_lanes  # int8 dots per step, their lanes
    XZ = 1 if fmt.zero_points else SYMMETRIC_ZERO_POINT  # XCOR: −XZ · Σ (int8 dots)

    def zero_point(WZ, row, kb):
        """The zero point of block kb of ``row`` (int32)."""
        if WZ is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return (T.Cast("int32", WZ[row, kb // 2]) >> ((kb % 2) * 4)) & 15

    def dots_f32(acc, W, WS, WZ, xs, row, nrows):
        """Per block, the widened codes minus the zero point times XE / XO, summed, times
        the block's scale."""
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
        """x quantized per block (XEQ, XOQ: int8, XSC: their scales per lane, XCOR: −XZ · Σ
        of each lane's 8 quantized inputs): per STEP_BYTES code bytes, I8_LANES int32 lanes
        of 4 bytes each, DOTS slices of DL lanes (one dot instruction's operands) each
        accumulated by two dots (low nibbles · XEQ, high nibbles · XOQ) onto XCOR (times the
        lane's block's zero point where the weights have them: Σ (code − z)·xq = Σ code·xq −
        z·Σ xq), converted and scaled by the lane's block's weight and input scales."""
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

    @T.macro
    def load_x(xval, xs):
        """x into ``xs``: de-interleaved per block; or (int8 dots) per block its scale
        max|x| / 127 and codes round(x / scale), de-interleaved, with each lane's scale and
        zero-point correction; or (``int8_x``, float32 dots) rounded so and scaled back."""
        XE, XO, XEQ, XOQ, XCOR, XSC = xs
        if INT8:
            # x per block: scale max|x| / 127, codes round(x / scale) de-interleaved
            sx = T.alloc_buffer((KB,), "float32", scope="local")
            for kb in range(KB):
                am = T.alloc_buffer((1,), "float32", scope="local")
                am[0] = T.float32(0)
                for k in range(BLK):
                    am[0] = T.max(am[0], T.fabs(xval(kb * BLK + k)))
                sx[kb] = am[0] / T.float32(127)
                inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                for i in range(BB):
                    XEQ[kb * BB + i] = T.Cast("int8", T.nearbyint(xval(kb * BLK + 2 * i) * inv))
                    XOQ[kb * BB + i] = T.Cast("int8", T.nearbyint(xval(kb * BLK + 2 * i + 1) * inv))
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
                    am[0] = T.max(am[0], T.fabs(xval(kb * BLK + k)))
                inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                for i in range(BB):
                    XE[kb * BB + i] = T.nearbyint(xval(kb * BLK + 2 * i) * inv) * (
                        am[0] / T.float32(127))
                    XO[kb * BB + i] = T.nearbyint(xval(kb * BLK + 2 * i + 1) * inv) * (
                        am[0] / T.float32(127))
        else:
            for kb in range(KB):
                for i in range(BB):
                    XE[kb * BB + i] = xval(kb * BLK + 2 * i)
                    XO[kb * BB + i] = xval(kb * BLK + 2 * i + 1)

    return RowDots(dots=dots_i8 if INT8 else dots_f32, load_x=load_x,
                   lanes=I8_LANES if INT8 else VB, nxf=NXF, nxq=NXQ, ns=NS)

def concat_lists(rows: int, nb: int):
    """The macro ``concat(IDX, VAL, CNT, LIDX, LVAL, c)``: the per-task lists (task fb's
    CNT[fb] entries at IDX / VAL[fb · nb ...]) of ``rows // nb`` tasks concatenated into
    LIDX / LVAL, their length in c[0], and LIDX[c[0]] = ``rows``: a sentinel in no group
    (``column_pass`` applies the last group's sum on it)."""
    NB, NFB, F = nb, rows // nb, rows

    @T.macro
    def concat(IDX, VAL, CNT, LIDX, LVAL, c):
        c[0] = 0
        for fb in range(NFB):
            for q in range(CNT[fb]):
                LIDX[c[0] + q] = IDX[fb * NB + q]
                LVAL[c[0] + q] = VAL[fb * NB + q]
            c[0] = c[0] + CNT[fb]
        LIDX[c[0]] = F  # a sentinel in no group: the last group's sum is applied

    return concat


def vector_registers(count: int, lanes: int, dtype: str) -> list:
    """``count`` accumulators of ``lanes`` as separate buffers in the default (global) scope:
    TVM places such a small buffer (under 1 KiB) on the stack, where LLVM keeps it in a
    vector register; a "local" buffer, or a larger one, lives in a heap workspace, so every
    update is a load and a store. Called while a kernel is parsed (emits the allocations)."""
    return [T.alloc_buffer((lanes,), dtype) for _ in range(count)]


def memory_vectors(count: int, lanes: int):
    """A local float32 buffer [count, lanes] (a heap workspace: kept out of the vector
    registers, for sums updated rarely)."""
    return T.alloc_buffer((count, lanes), "float32", scope="local")


def tile_zero(dtype: str):
    """``zero(tot, acc)``: a register tile's totals (``memory_vectors``) and its sums (16-lane
    ``vector_registers`` of ``dtype``) set to 0 (emitted while a kernel is parsed)."""

    def zero(tot, acc):
        lanes = T.ramp(0, 1, CHUNK // 2)
        for h in range(len(acc)):
            T.buffer_store(tot, T.broadcast(T.float32(0), CHUNK // 2), [h, lanes])
            T.buffer_store(acc[h], T.broadcast(getattr(T, dtype)(0), CHUNK // 2), [lanes])

    return zero


def tile_store(OUT, row, tot, B, col0):
    """OUT[row, col0 …] = a register tile's totals (+ B where given), 16 lanes a vector
    (emitted while a kernel is parsed)."""
    half = CHUNK // 2
    for h in range(int(tot.shape[0])):
        b = T.broadcast(T.float32(0), half) if B is None else B[T.ramp(col0 + h * half, 1, half)]
        T.buffer_store(OUT, tot[h, T.ramp(0, 1, half)] + b, [row, T.ramp(col0 + h * half, 1, half)])


def column_pass(width: int, block: int, parts: int, cw: int, ahead: int, scales_ahead: bool,
                parallel: bool, registers: bool = False):
    """The macro ``gather(OUT, row, LIDX, LVAL, c, W, WS, WZ, B)``:
    ``OUT[row, :width] = B + Σ_{q < c[0]} LVAL[q] · W[LIDX[q], :]`` on a projection re-laid
    out per row (``q4_layout.Q4Columns``: W codes [rows, width/2], WS scales and WZ zero
    points [rows/block, width]), LIDX sorted with its sentinel at c[0] (``concat_lists``).
    ``parts`` tasks over the outputs (parallel unless ``parallel`` is False), register tiles
    of ``cw`` outputs; ``ahead``: the codes of the row listed this far ahead are prefetched
    (each tile reads one short piece of every listed row: latency-bound), and with
    ``scales_ahead`` its group's scales where that group starts. ``registers``: the tile's
    sums as 16-lane buffers that LLVM keeps in vector registers (``vector_registers``;
    otherwise one local buffer each, in a heap workspace)."""
    if cw % CHUNK or width % (parts * cw):
        raise CodegenError(f"int4 column pass: {parts} parts of tiles of {cw} outputs do not "
                           f"divide {width} outputs in chunks of {CHUNK}")
    BLK, P, CW, DOP, AHEAD, SCALES_AHEAD = block, parts, cw, width // parts, ahead, scales_ahead
    HALF = CHUNK // 2
    loop = T.parallel if parallel else T.serial

    def down_zero_point(WZ, g, col):
        if WZ is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return T.Cast("int32", WZ[g, col])

    NV = CW // HALF
    lanes = T.ramp(0, 1, HALF)

    def zero_points(WZ, g, col):
        if WZ is None:
            return T.broadcast(T.int32(SYMMETRIC_ZERO_POINT), HALF)
        return T.Cast("int32x16", WZ.vload([g, col], "uint8x16"))

    def row_step(grp, W, WZ, j, a, g, col0):
        """grp += a · (code − zero point) over the tile's chunks of row j (emitted)."""
        av = T.broadcast(a, HALF)
        for h in range(CW // CHUNK):
            b = T.Cast("int32x16", W.vload([j, (col0 + h * CHUNK) // 2], "uint8x16"))
            lo = (b & T.broadcast(T.int32(15), HALF)) - zero_points(WZ, g, col0 + h * CHUNK)
            hi = T.shift_right(b, T.broadcast(T.int32(4), HALF)) - zero_points(
                WZ, g, col0 + h * CHUNK + HALF)
            T.buffer_store(grp[2 * h], grp[2 * h][lanes] + av * T.Cast("float32x16", lo), [lanes])
            T.buffer_store(grp[2 * h + 1], grp[2 * h + 1][lanes] + av * T.Cast("float32x16", hi),
                           [lanes])

    def flush(tot, grp, WS, g, col0):
        for h in range(NV):
            T.buffer_store(tot, tot[h, lanes] + WS[g, T.ramp(col0 + h * HALF, 1, HALF)]
                           * grp[h][lanes], [h, lanes])
            T.buffer_store(grp[h], T.broadcast(T.float32(0), HALF), [lanes])

    zero, store = tile_zero("float32"), tile_store

    @T.macro
    def gather_registers(OUT, row, LIDX, LVAL, c, W2, W2S, W2Z, B2):
        for p in loop(P):
            tot = T.meta_var(memory_vectors(NV, HALF))
            grp = T.meta_var(vector_registers(NV, HALF, "float32"))
            for cc in range(DOP // CW):
                zero(tot, grp)
                for q in range(c[0]):
                    j = LIDX[q]
                    g = j // BLK
                    if AHEAD > 0:
                        jn = LIDX[T.min(q + AHEAD, c[0] - 1)]
                        for ln in T.unroll(max(1, CW // 2 // LINE)):
                            prefetch(W2[jn, (p * DOP + cc * CW) // 2 + ln * LINE])
                        if SCALES_AHEAD:  # noqa: SIM102 (a parse-time choice around a TIR if)
                            if jn // BLK != LIDX[T.min(q + AHEAD - 1, c[0] - 1)] // BLK:
                                for ln in T.unroll(CW * 4 // LINE):
                                    prefetch(W2S[jn // BLK, p * DOP + cc * CW + ln * (LINE // 4)])
                    row_step(grp, W2, W2Z, j, LVAL[q], g, p * DOP + cc * CW)
                    if LIDX[q + 1] // BLK != g:
                        flush(tot, grp, W2S, g, p * DOP + cc * CW)
                store(OUT, row, tot, B2, p * DOP + cc * CW)

    @T.macro
    def gather(OUT, row, LIDX, LVAL, c, W2, W2S, W2Z, B2):
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
                    OUT[row, p * DOP + cc * CW + i] = tot[i] + bias(B2, p * DOP + cc * CW + i)

    return gather_registers if registers else gather


@dataclass(frozen=True)
class NeuronRows:
    """Phase-1 macros of the kernels that read the gate and up projections per neuron (in a
    task of ``nb`` neurons fb·nb …, ``rows`` rows per pass; ``neuron_rows``):

    * ``gates(fb, gate, acc, W1, W1S, W1Z, B1, xs)``: gate[fl] = x·W1[fb·nb + fl] + B1 for
      every neuron of the task;
    * ``listed(fb, n, acc, accb, CAND, IDX, VAL, xs, WA, WAS, WAZ, WB, WBS, WBZ, keep,
      value)``: the candidates fl with ``keep(fl)`` (n[0] of them, into CAND), the row dots
      of WA (and WB where it is not None, into accb) for the candidates only, ``rows`` at a
      time, and ``value(fl, r)`` (r: the candidate's accumulator row) appended to the task's
      list IDX / VAL where it is non-zero, counted in n[1] (which the caller zeroes)."""

    gates: object
    listed: object


def neuron_rows(nb: int, rows: int, up_ahead: int, rd: RowDots, fmt: Q4Format) -> NeuronRows:
    """The phase-1 macros for ``rd``'s row dots on rows stored as ``fmt``; ``up_ahead``: lines
    prefetched of each of the next candidates' rows (then the hardware prefetcher follows
    each row)."""
    NB, R, UP_AHEAD, BB = nb, rows, up_ahead, fmt.block // 2
    dots = rd.dots

    @T.macro
    def gates(fb, gate, acc, W1, W1S, W1Z, B1, xs):
        for r4 in range(NB // R):
            dots(acc, W1, W1S, W1Z, xs, lambda r: fb * NB + r4 * R + r, R)  # noqa: B023 (called while parsing)
            for r in T.unroll(R):
                gate[r4 * R + r] = acc[r, 0] + bias(B1, fb * NB + r4 * R + r)

    @T.macro
    def listed(fb, n, acc, accb, CAND, IDX, VAL, xs, WA, WAS, WAZ, WB, WBS, WBZ, keep, value):
        n[0] = 0
        for fl in range(NB):
            if keep(fl):
                CAND[fb * NB + n[0]] = fl
                n[0] = n[0] + 1
        for q4 in range(n[0] // R):
            if UP_AHEAD > 0:
                for r in T.unroll(R):
                    jn = fb * NB + CAND[fb * NB + T.min((q4 + 1) * R + r, n[0] - 1)]
                    for ln in T.unroll(UP_AHEAD):
                        prefetch(WA[jn, ln * LINE // BB, 0])
                        if WB is not None:
                            prefetch(WB[jn, ln * LINE // BB, 0])
            dots(acc, WA, WAS, WAZ, xs, lambda r: fb * NB + CAND[fb * NB + q4 * R + r], R)  # noqa: B023
            if WB is not None:
                dots(accb, WB, WBS, WBZ, xs, lambda r: fb * NB + CAND[fb * NB + q4 * R + r], R)  # noqa: B023
            for r in range(R):
                fl = CAND[fb * NB + q4 * R + r]
                a = value(fl, r)
                if a != T.float32(0):
                    IDX[fb * NB + n[1]] = fb * NB + fl
                    VAL[fb * NB + n[1]] = a
                    n[1] = n[1] + 1
        for q in range(n[0] // R * R, n[0]):
            dots(acc, WA, WAS, WAZ, xs, lambda r: fb * NB + CAND[fb * NB + q], 1)  # noqa: B023
            if WB is not None:
                dots(accb, WB, WBS, WBZ, xs, lambda r: fb * NB + CAND[fb * NB + q], 1)  # noqa: B023
            fl = CAND[fb * NB + q]
            a = value(fl, 0)
            if a != T.float32(0):
                IDX[fb * NB + n[1]] = fb * NB + fl
                VAL[fb * NB + n[1]] = a
                n[1] = n[1] + 1

    return NeuronRows(gates=gates, listed=listed)


# --- int8 column passes: the listed values quantized per group, 4 rows per int8 dot lane ---


def quantize_list(rows: int, block: int):
    """The macro ``quantize(LIDX, LVAL, c, QROW, QX, GS, GC, GM, nq)``: the list of c[0]
    (row, value) pairs (LIDX sorted, its sentinel at c[0]) quantized per group of ``block``
    rows as ONNX Runtime's ``accuracy_level`` 4 quantizes an input block (scale GS[g] =
    max |v| / 127 over the group's listed values, codes round(v / scale)), in quads of 4
    rows of one group: quad u holds rows QROW[4u .. 4u + 3] and their int8 codes packed in
    QX[u] (row r of the quad in byte r; a group's last quad is padded with its last row and
    code 0), nq[0] quads, QROW[4·nq[0]] = ``rows`` (a sentinel in no group). GC[g] = −8 ·
    Σ codes of group g: the symmetric zero point's share. GM: [groups] scratch."""
    G, BLK = rows // block, block

    @T.macro
    def quantize(LIDX, LVAL, c, QROW, QX, GS, GC, GM, nq):
        m = T.alloc_buffer((1,), "int32", scope="local")
        for g in range(G):
            GM[g] = T.float32(0)
            GC[g] = 0
        for q in range(c[0]):
            GM[LIDX[q] // BLK] = T.max(GM[LIDX[q] // BLK], T.fabs(LVAL[q]))
        nq[0] = 0
        m[0] = 0
        for q in range(c[0]):
            j = LIDX[q]
            g = j // BLK
            inv = T.if_then_else(GM[g] > T.float32(0), T.float32(127) / GM[g], T.float32(0))
            xq = T.Cast("int32", T.nearbyint(LVAL[q] * inv))
            GS[g] = GM[g] / T.float32(127)
            GC[g] = GC[g] - SYMMETRIC_ZERO_POINT * xq
            if m[0] == 0:
                QX[nq[0]] = 0
            QROW[4 * nq[0] + m[0]] = j
            QX[nq[0]] = QX[nq[0]] | T.shift_left(xq & 255, 8 * m[0])
            m[0] = m[0] + 1
            if LIDX[q + 1] // BLK != g:
                for r in range(4):
                    if r >= m[0]:
                        QROW[4 * nq[0] + r] = j
                m[0] = 4
            if m[0] == 4:
                nq[0] = nq[0] + 1
                m[0] = 0
        QROW[4 * nq[0]] = G * BLK

    return quantize


def round_list(rows: int, block: int):
    """The macro ``round(LIDX, LVAL, c, GM)``: the list of c[0] (row, value) pairs (LIDX
    sorted) rounded to int8 per group of ``block`` rows and scaled back in place, the
    float32 steps ``quantize_list`` takes (scale max |v| / 127 over the group's listed
    values, code round-half-even(v · 127 / max |v|)): float32 dots on the values int8 dots
    see (``Q4Format.int8_x`` without the int8 dot). GM: [groups] scratch."""
    G, BLK = rows // block, block

    @T.macro
    def round_(LIDX, LVAL, c, GM):
        for g in range(G):
            GM[g] = T.float32(0)
        for q in range(c[0]):
            GM[LIDX[q] // BLK] = T.max(GM[LIDX[q] // BLK], T.fabs(LVAL[q]))
        for q in range(c[0]):
            g = LIDX[q] // BLK
            inv = T.if_then_else(GM[g] > T.float32(0), T.float32(127) / GM[g], T.float32(0))
            LVAL[q] = T.nearbyint(LVAL[q] * inv) * (GM[g] / T.float32(127))

    return round_


# byte 4i + r of a quad's packed vector: byte i of row r's 16-byte piece
INTERLEAVE = [16 * r + i for i in range(CHUNK // 2) for r in range(4)]


def column_pass_i8(width: int, block: int, parts: int, cw: int, ahead: int, parallel: bool,
                   isa: Q4Isa):
    """The macro ``gather(OUT, row, QROW, QX, GS, GC, nq, W, WS, B, rowb, WB, WSB, BB)``:
    ``column_pass`` on the quads of ``quantize_list`` with symmetric codes, into
    OUT[row] from W (and, where WB is not None, into OUT[rowb] from WB in the same pass over
    the quads: two projections of the same input): per register tile of ``cw`` outputs and
    quad, the four rows' 16-byte pieces interleaved by a byte shuffle (row r in byte r of
    each int32 lane), their low and high nibbles two int8 dots (``isa.dot``: 4 products a lane) with
    the quad's codes; per group, the int32 sums plus GC[g] converted and
    scaled by GS[g] and the group's weight scales once. ``ahead``: the rows of the quad this
    far ahead are prefetched, and its group's scales where that group starts."""
    if cw % CHUNK or width % (parts * cw):
        raise CodegenError(f"int4 column pass: {parts} parts of tiles of {cw} outputs do not "
                           f"divide {width} outputs in chunks of {CHUNK}")
    BLK, P, CW, DOP, AHEAD = block, parts, cw, width // parts, ahead
    HALF = CHUNK // 2
    loop = T.parallel if parallel else T.serial
    mask = T.broadcast(T.int32(0x0F0F0F0F), HALF)
    DOTS, DL = HALF // isa.dot_lanes, isa.dot_lanes  # int8 dots per 16 lanes, their lanes

    def lane_slice(v, s):
        """Lanes s·DL … of the 16-lane vector v (v itself where one dot takes all)."""
        return v if DOTS == 1 else T.Shuffle([v], list(range(s * DL, (s + 1) * DL)))

    NV = CW // HALF  # 16-lane vectors of a tile

    def registers(dtype):
        return vector_registers(NV, HALF, dtype)

    lanes = T.ramp(0, 1, HALF)

    def quad_step(acc, W, QROW, u, xq, col0):
        """acc += the quad's products over the tile's chunks (emitted)."""
        xd = T.broadcast(xq, DL)
        for h in range(CW // CHUNK):
            pieces = [W.vload([QROW[4 * u + r], (col0 + h * CHUNK) // 2], "uint8x16")
                      for r in range(4)]
            packed = T.reinterpret("int32x16", T.Shuffle(pieces, INTERLEAVE))
            lo, hi = acc[2 * h], acc[2 * h + 1]
            codes_lo = packed & mask
            codes_hi = T.shift_right(packed, T.broadcast(T.int32(4), HALF)) & mask
            for s in range(DOTS):  # the int8 dots over the 16 lanes, DL lanes each
                sl = T.ramp(s * DL, 1, DL) if DOTS > 1 else lanes
                T.buffer_store(lo, int8_dot(isa, lo[sl], lane_slice(codes_lo, s), xd), [sl])
                T.buffer_store(hi, int8_dot(isa, hi[sl], lane_slice(codes_hi, s), xd), [sl])

    def ahead_rows(W, WS, QROW, un, col0):
        """Prefetch quad un's pieces of W and, where its group starts, the group's scales."""
        for r in range(4):
            for ln in range(max(1, CW // 2 // LINE)):
                prefetch(W[QROW[4 * un + r], col0 // 2 + ln * LINE])
        with T.If(QROW[4 * un] // BLK != QROW[4 * T.max(un - 1, 0)] // BLK), T.Then():
            for ln in range(CW * 4 // LINE):
                prefetch(WS[QROW[4 * un] // BLK, col0 + ln * (LINE // 4)])

    def flush(tot, acc, WS, GS, GC, g, col0):
        for h in range(NV):
            T.buffer_store(tot, tot[h, lanes] + WS[g, T.ramp(col0 + h * HALF, 1, HALF)] * (
                T.broadcast(GS[g], HALF) * T.Cast("float32x16", acc[h][lanes] + T.broadcast(
                    GC[g], HALF))), [h, lanes])
            T.buffer_store(acc[h], T.broadcast(T.int32(0), HALF), [lanes])

    zero, store = tile_zero("int32"), tile_store

    @T.macro
    def gather(OUT, row, QROW, QX, GS, GC, nq, W, WS, B, rowb, WB, WSB, BB):
        for p in loop(P):
            tot = T.meta_var(memory_vectors(NV, HALF))
            acc = T.meta_var(registers("int32"))
            totb = T.meta_var(memory_vectors(NV, HALF) if WB is not None else None)
            accb = T.meta_var(registers("int32") if WB is not None else None)
            for cc in range(DOP // CW):
                zero(tot, acc)
                if WB is not None:
                    zero(totb, accb)
                for u in range(nq[0]):
                    g = QROW[4 * u] // BLK
                    if AHEAD > 0:
                        ahead_rows(W, WS, QROW, T.min(u + AHEAD, nq[0] - 1), p * DOP + cc * CW)
                        if WB is not None:
                            ahead_rows(WB, WSB, QROW, T.min(u + AHEAD, nq[0] - 1), p * DOP + cc * CW)
                    quad_step(acc, W, QROW, u, QX[u], p * DOP + cc * CW)
                    if WB is not None:
                        quad_step(accb, WB, QROW, u, QX[u], p * DOP + cc * CW)
                    if QROW[4 * u + 4] // BLK != g:
                        flush(tot, acc, WS, GS, GC, g, p * DOP + cc * CW)
                        if WB is not None:
                            flush(totb, accb, WSB, GS, GC, g, p * DOP + cc * CW)
                store(OUT, row, tot, B, p * DOP + cc * CW)
                if WB is not None:
                    store(OUT, rowb, totb, BB, p * DOP + cc * CW)

    return gather
