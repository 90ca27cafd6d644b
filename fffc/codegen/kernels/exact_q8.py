"""``SparseFFN`` mode=exact, one token, on int8 weights in MatMulNBits' layout (CPUs).

The FFN ``Y = (relu(X·W1 + B1) [⊙ up(X·WU)])·W2 + B2`` (ReLU, ReGLU, dReLU) with every
projection stored as ONNX Runtime's ``MatMulNBits`` stores it with ``bits`` 8
(``fffc.contract.int8``): W1 and WU as the nodes hold them (codes ``[d_ff, d_in/block,
block]``, one a byte, a row of blocks per neuron), W2 re-laid out per neuron
(``int8.columns``: codes ``[d_ff, d_out]``). The kernel is exact with respect to the
dequantized weights: each weight is ``(code − zero point) · scale`` as float32, activations
stay float32, so the result equals the float FFN on ``int8.dequantize``'s matrices up to
float reassociation. Per token, gate first (the structure of ``exact_q4``):

1. per task of ``nb`` neurons (parallel): the gate of every neuron, ``rows`` rows of W1
   streamed side by side — per block, Σ (code − z)·x over its codes, times the block's
   scale; then, for the neurons whose gate is positive only, the up row's dot with x in the
   same way (the up rows of the others are never read) and the neuron's activation, listed
   (neuron, value) where it is non-zero;
2. the down projection over the listed neurons, split over the outputs (parallel): per
   register tile of ``cw`` outputs, the listed neurons' column codes scaled by their
   activation are summed per group of ``block`` neurons (which share their scales), and
   each group's sum is multiplied by the group's scales once — the scales of a group
   without a listed neuron are never read.

With ``Q4Dot.INT8`` the gate and up dots run on x quantized to int8 per block, as ONNX
Runtime's ``accuracy_level`` 4 computes: integer products of the codes with the signed x,
the zero point's share subtracted as ``z · Σ xq`` per lane. Where the ISA's dot takes
unsigned first operands (``UNSIGNED_DOTS``: AVX-512 VNNI ``vpdpbusd``, u8 · s8) the codes
go in as they are; a signed-by-signed dot (aarch64 ``sdot``) takes ``code − 128`` (the
byte's top bit flipped), the accumulator then starting at ``(z − 128) · Σ xq``'s negation
instead. A format with ``int8_x`` (SparseFFN's ``accuracy_level`` 4) computes that function
with either dots: the float32 ones then read x rounded and scaled back, for CPUs without
the int8 dot.

With ``act_quant`` (the AQ input, ``fffc.contract.act_quant``: ``quantize_static``'s QDQ
pairs inside the FFN) each present place's fake quantization is applied where the op text
puts it, as QuantizeLinear → DequantizeLinear compute it (v / s, round half to even, + z,
clamped, − z, · s, in float32): on the gate's dot before B1, on the gate's activation, on
the up activation and on the product. A neuron is a candidate when its fake-quantized gate
is > 0 and listed when its fake-quantized product is non-zero; fq(0) = 0 keeps every
skipped neuron's contribution exactly zero, so skipping stays exact.

The tiling, the dots' choice and the instructions come from the family's ``Q4Plan`` and
``Q4Isa`` (``exact_q4``), as for the int4 kernel.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.act_quant import At
from fffc.contract.errors import CodegenError
from fffc.contract.int8 import SYMMETRIC_ZERO_POINT
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import WeightBits

from .._tvm import T
from ..q4_layout import CHUNK
from .exact_q4 import Q4Plan, Q4Tiling
from .pieces import activation, bias, folds, with_args
from .q4_pieces import I8_LANES, LINE, STEP_BYTES, X86_ISA, Q4Dot, Q4Isa, int8_dot, prefetch
from .sparse_ffn import check_spec

CODE_LANES = 16  # code bytes per vector step of the float32 dots
UNSIGNED_DOTS = (X86_ISA,)  # int8 dots whose first operand is unsigned bytes (codes 0..255)
TOP_BITS = -0x7F7F7F80  # 0x80808080 as int32: each byte's top bit (code ^ 0x80 = code − 128)


def q8_arg_names(spec: SparseSpec) -> list[str]:
    """The kernel's arguments (SparseSpec's quantized argument order)."""
    return spec.arg_names()


def check_q8(spec: SparseSpec, tiling: Q4Tiling, dot: Q4Dot, isa: Q4Isa) -> None:
    """Raise CodegenError for shapes the int8 exact kernel cannot compute."""
    check_spec(spec)  # exact, ReLU gate, the up activations
    if spec.bits is not WeightBits.INT8:
        raise CodegenError(f"int8 kernel: bits {int(spec.bits)}, not 8")
    blk = spec.block
    if spec.d_in % blk or spec.d_ff % blk:
        raise CodegenError(f"int8 kernel: d_in {spec.d_in} and d_ff {spec.d_ff} must be "
                           f"multiples of the block {blk}")
    if spec.d_out % CHUNK:
        raise CodegenError(f"int8 kernel: d_out {spec.d_out} must be a multiple of {CHUNK}")
    t = tiling
    if spec.d_ff % t.nb or t.nb % t.rows or t.cw % CHUNK or spec.d_out % (t.parts * t.cw):
        raise CodegenError(f"int8 kernel: tiling {t} does not divide {spec}")
    if dot is Q4Dot.INT8 and spec.d_in % STEP_BYTES:
        raise CodegenError(f"int8 kernel, int8 dots: d_in {spec.d_in} must be a multiple of "
                           f"{STEP_BYTES}")


def exact_q8_primfunc(spec: SparseSpec, tiling: Q4Tiling, symbol: str,
                      dot: Q4Dot = Q4Dot.FLOAT32, isa: Q4Isa = X86_ISA):
    """The PrimFunc of the int8 exact kernel for a CPU of ``isa``; arguments
    ``q8_arg_names(spec)``. ``dot`` INT8 needs a target with ``isa.dot_features``."""
    dot = Q4Dot(dot)
    check_q8(spec, tiling, dot, isa)
    t = tiling
    D, F, DO, BLK = spec.d_in, spec.d_ff, spec.d_out, spec.block
    KB = D // BLK  # blocks of a row
    VB = min(BLK, CODE_LANES)
    NCH = BLK // VB  # vector steps per block
    G = F // BLK  # groups of neurons sharing the down projection's scales
    NB, NFB, R = t.nb, F // t.nb, t.rows
    P, CW, DOP, AHEAD = t.parts, t.cw, DO // t.parts, t.ahead
    SCALES_AHEAD = t.scales_ahead
    UP_AHEAD = min(t.up_ahead, D // LINE)
    W2_LINES = max(1, CW // LINE)
    loop = T.parallel if t.parallel else T.serial
    gated, up = spec.gated, activation(spec.up_activation)
    INT8 = dot is Q4Dot.INT8
    QX = spec.int8_x  # x rounded to int8 per block (INT8 dots always compute so)
    AL = I8_LANES if INT8 else VB  # accumulator lanes of a row dot
    NS = D // STEP_BYTES if INT8 else 1  # int8 steps of a row
    NXQ, NXF = (D, 1) if INT8 else (1, D)  # x's int8 / float copies (1: unused)
    DOTS, DL = STEP_BYTES // isa.dot_bytes, isa.dot_lanes  # int8 dots per step, their lanes
    SIGNED = isa not in UNSIGNED_DOTS  # codes shifted to code − 128 for a signed dot
    AQ_ON = spec.act_quant

    def fq(AQ, at, v):
        """Place ``at``'s fake quantization of v (identity where AQ has no scale there)."""
        if not AQ_ON:
            return v
        s, z = AQ[int(at), 0], AQ[int(at), 1]
        q = T.max(T.min(T.nearbyint(v / s) + z, AQ[int(at), 3]), AQ[int(at), 2])
        return T.if_then_else(s > T.float32(0), (q - z) * s, v)

    def gate_value(AQ, d, b):
        """The gate's activation from its dot d and bias b: fq_G(relu(fq_P(d) + b)) gated,
        fq_H(relu(fq_P(d) + b)) dense (ReLU: the kernel's gate test is > 0)."""
        g = T.max(fq(AQ, At.PRE, d) + b, T.float32(0))
        return fq(AQ, At.GATE if gated else At.HIDDEN, g) if AQ_ON else d + b

    def hidden(AQ, g, u):
        """The down projection's input of a gated neuron: fq_H(g · fq_U(up(u)))."""
        return fq(AQ, At.HIDDEN, g * fq(AQ, At.UP, up(u)))

    def zero_point(WZ, row, kb):
        """The zero point of block kb of ``row`` (int32)."""
        if WZ is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return T.Cast("int32", WZ[row, kb])

    def dots_f32(acc, W, WS, WZ, xs, row, nrows):
        """acc[r, 0] = Σ_k x_k · W[k, row(r)] for r < nrows: per block, the codes minus the
        zero point times x, summed, times the block's scale."""
        XF = xs[0]
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
                        term = (T.Cast("float32", T.Cast("int32", W[n, kb, ch * VB + v]) - z)
                                * XF[kb * BLK + ch * VB + v])
                        part = term if part is None else part + term
                    T.buffer_store(acc, acc[r, v] + WS[n, kb] * part, [r, v])
        folds([acc], VB, rows=nrows)

    def lane_blocks(nbv):
        """Lane l of a dot's DL lanes: its block within a slice of nbv blocks."""
        return [4 * lane // BLK for lane in range(DL)]

    def dots_i8(acc, W, WS, WZ, xs, row, nrows):
        """acc[r, 0] ≈ Σ_k x_k · W[k, row(r)] with x quantized per block (XQ: int8, XSC: its
        scale per lane, XCOR: −Σ of each lane's 4 quantized inputs): per STEP_BYTES code
        bytes, I8_LANES int32 lanes of 4 bytes each, DOTS slices of DL lanes (one dot's
        operands), each the dot of the codes with XQ onto z · XCOR (Σ (code − z)·xq =
        Σ code·xq − z·Σ xq; a signed dot: of code − 128 onto (z − 128) · XCOR), converted
        and scaled by the lane's block's weight and input scales."""
        XQ, XCOR, XSC = xs[1:]
        lanes = T.ramp(0, 1, I8_LANES)
        nbv = max(1, isa.dot_bytes // BLK)  # blocks per dot
        for r in range(nrows):
            T.buffer_store(acc, T.broadcast(T.float32(0), I8_LANES), [r, lanes])
        with T.serial(NS) as st:
            for s in range(DOTS):
                ob = st * STEP_BYTES + s * isa.dot_bytes if s else st * STEP_BYTES
                ol = st * I8_LANES + s * DL if s else st * I8_LANES
                sl = T.ramp(s * DL, 1, DL) if DOTS > 1 else lanes
                xq = T.reinterpret(f"int32x{DL}", XQ.vload([ob], f"int8x{isa.dot_bytes}"))
                cor = XCOR.vload([ol], f"int32x{DL}")
                xsc = XSC.vload([ol], f"float32x{DL}")
                for r in range(nrows):
                    n = row(r)
                    w = T.reinterpret(f"int32x{DL}",
                                      W.vload([n, ob // BLK, ob % BLK], f"uint8x{isa.dot_bytes}"))
                    if nbv > 1:  # the slice spans nbv blocks: per-lane scales, zero points
                        sv = WS.vload([n, ob // BLK], f"float32x{nbv}")
                        sw = T.Shuffle([sv] * (DL // nbv), lane_blocks(nbv))
                        if WZ is None:
                            zl = T.broadcast(T.int32(SYMMETRIC_ZERO_POINT), DL)
                        else:
                            zv = T.Cast(f"int32x{nbv}", WZ.vload([n, ob // BLK], f"uint8x{nbv}"))
                            zl = T.Shuffle([zv] * (DL // nbv), lane_blocks(nbv))
                    else:
                        sw = T.broadcast(WS[n, ob // BLK], DL)
                        zl = T.broadcast(zero_point(WZ, n, ob // BLK), DL)
                    if SIGNED:
                        top = T.broadcast(T.int32(TOP_BITS), DL)
                        shift = T.broadcast(T.int32(SYMMETRIC_ZERO_POINT), DL)
                        d = int8_dot(isa, (zl - shift) * cor, w ^ top, xq)
                    else:
                        d = int8_dot(isa, zl * cor, w, xq)
                    T.buffer_store(acc, acc[r, sl] + T.Cast(f"float32x{DL}", d) * (sw * xsc),
                                   [r, sl])
        folds([acc], I8_LANES, rows=nrows)

    dots = dots_i8 if INT8 else dots_f32

    def down_zero_point(W2Z, g, col):
        if W2Z is None:
            return T.int32(SYMMETRIC_ZERO_POINT)
        return T.Cast("int32", W2Z[g, col])

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, KB, BLK), "uint8", align=4),
               W1S: T.Buffer((F, KB), "float32", align=4),
               W1Z: T.Optional(T.Buffer((F, KB), "uint8", align=1)),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO), "uint8", align=4),
               W2S: T.Buffer((G, DO), "float32", align=4),
               W2Z: T.Optional(T.Buffer((G, DO), "uint8", align=1)),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((F, KB, BLK), "uint8", align=4)),
               WUS: T.Optional(T.Buffer((F, KB), "float32", align=4)),
               WUZ: T.Optional(T.Buffer((F, KB), "uint8", align=1)),
               AQ: T.Optional(T.Buffer((4, 4), "float32", align=4)), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        XF = T.alloc_buffer((NXF,), "float32")
        XQ = T.alloc_buffer((NXQ,), "int8")
        XCOR = T.alloc_buffer((NS * I8_LANES,), "int32")
        XSC = T.alloc_buffer((NS * I8_LANES,), "float32")
        CAND = T.alloc_buffer((F,), "int32")
        IDX = T.alloc_buffer((F,), "int32")
        VAL = T.alloc_buffer((F,), "float32")
        CNT = T.alloc_buffer((NFB,), "int32")
        LIDX = T.alloc_buffer((F + 1,), "int32")
        LVAL = T.alloc_buffer((F,), "float32")
        xs = T.meta_var((XF, XQ, XCOR, XSC))
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            if INT8:
                # x per block: scale max|x| / 127, codes round(x / scale)
                sx = T.alloc_buffer((KB,), "float32", scope="local")
                for kb in range(KB):
                    am = T.alloc_buffer((1,), "float32", scope="local")
                    am[0] = T.float32(0)
                    for k in range(BLK):
                        am[0] = T.max(am[0], T.fabs(X[tb, kb * BLK + k]))
                    sx[kb] = am[0] / T.float32(127)
                    inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                    for k in range(BLK):
                        XQ[kb * BLK + k] = T.Cast("int8", T.nearbyint(X[tb, kb * BLK + k] * inv))
                for st in range(NS):
                    for ln in range(I8_LANES):
                        XSC[st * I8_LANES + ln] = sx[(st * STEP_BYTES + 4 * ln) // BLK]
                        XCOR[st * I8_LANES + ln] = T.int32(0)
                        for m in range(4):
                            XCOR[st * I8_LANES + ln] = XCOR[st * I8_LANES + ln] - T.Cast(
                                "int32", XQ[st * STEP_BYTES + 4 * ln + m])
            elif QX:
                # float dots on x rounded to int8 per block as above, scaled back (q · s)
                for kb in range(KB):
                    am = T.alloc_buffer((1,), "float32", scope="local")
                    am[0] = T.float32(0)
                    for k in range(BLK):
                        am[0] = T.max(am[0], T.fabs(X[tb, kb * BLK + k]))
                    inv = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
                    for k in range(BLK):
                        XF[kb * BLK + k] = T.nearbyint(X[tb, kb * BLK + k] * inv) * (
                            am[0] / T.float32(127))
            else:
                for k in range(D):
                    XF[k] = X[tb, k]
            # Phase 1: gates, then the up rows of the positive ones, listed activations.
            for fb in loop(NFB):
                acc = T.alloc_buffer((R, AL), "float32", scope="local")
                gate = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((2,), "int32", scope="local")
                for r4 in range(NB // R):
                    dots(acc, W1, W1S, W1Z, xs, lambda r: fb * NB + r4 * R + r, R)  # noqa: B023 (called while parsing)
                    for r in T.unroll(R):
                        gate[r4 * R + r] = gate_value(AQ, acc[r, 0], bias(B1, fb * NB + r4 * R + r))
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
                                    prefetch(WU[jn, ln * LINE // BLK, ln * LINE % BLK])
                        dots(acc, WU, WUS, WUZ, xs, lambda r: fb * NB + CAND[fb * NB + q4 * R + r], R)  # noqa: B023
                        for r in range(R):
                            fl = CAND[fb * NB + q4 * R + r]
                            a = hidden(AQ, gate[fl], acc[r, 0])
                            if a != T.float32(0):
                                IDX[fb * NB + n[1]] = fb * NB + fl
                                VAL[fb * NB + n[1]] = a
                                n[1] = n[1] + 1
                    for q in range(n[0] // R * R, n[0]):
                        dots(acc, WU, WUS, WUZ, xs, lambda r: fb * NB + CAND[fb * NB + q], 1)  # noqa: B023
                        fl = CAND[fb * NB + q]
                        a = hidden(AQ, gate[fl], acc[0, 0])
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
                            for ln in T.unroll(W2_LINES):
                                prefetch(W2[jn, p * DOP + cc * CW + ln * LINE])
                            if SCALES_AHEAD:  # noqa: SIM102 (a parse-time choice around a TIR if)
                                if jn // BLK != LIDX[T.min(q + AHEAD - 1, c[0] - 1)] // BLK:
                                    for ln in T.unroll(CW * 4 // LINE):
                                        prefetch(W2S[jn // BLK, p * DOP + cc * CW + ln * (LINE // 4)])
                        for i in T.vectorized(CW):
                            # meta_var: no scalar binding inside the vector loop
                            col = T.meta_var(p * DOP + cc * CW + i)
                            grp[i] = grp[i] + a * T.Cast(
                                "float32", T.Cast("int32", W2[j, col]) - down_zero_point(W2Z, g, col))
                        if LIDX[q + 1] // BLK != g:
                            for i in T.vectorized(CW):
                                tot[i] = tot[i] + W2S[g, p * DOP + cc * CW + i] * grp[i]
                                grp[i] = T.float32(0)
                    for i in T.vectorized(CW):
                        Y[tb, p * DOP + cc * CW + i] = tot[i] + bias(B2, p * DOP + cc * CW + i)

    return with_args(kernel, q8_arg_names(spec))


def q8_from_plan(spec: SparseSpec, plan: Q4Plan, symbol: str):
    """The kernel as a family's int4 ``Q4Plan`` says (its tiling, ISA and dots)."""
    return exact_q8_primfunc(spec, plan.tiling, symbol, plan.dot, plan.isa)


def q8_inputs(spec: SparseSpec, w1, w2, wu=None, b1=None, b2=None) -> dict:
    """The kernel's inputs by argument name from ``fffc.contract.int8`` records: ``w1``,
    ``wu`` as MatMulNBits holds them (Q8Matrix, N = d_ff), ``w2`` re-laid out (Q8Columns)."""
    out = {"W1": w1.codes, "W1S": w1.scales, "W1Z": w1.zero_points, "B1": b1,
           "W2": w2.codes, "W2S": w2.scales, "W2Z": w2.zero_points, "B2": b2}
    if spec.gated:
        out.update(WU=wu.codes, WUS=wu.scales, WUZ=wu.zero_points)
    return out
