"""``SparseFFN`` mode=teal, one token, on int4 weights in MatMulNBits' layout (CPUs).

TEAL's thresholded FFN (``sparse_ffn_teal``'s function, ``TH = [t_in, t_hidden]``, a
negative threshold keeps all): x' = Where(|x| <= t_in, 0, x);
a = act(x'·W1 + B1) [⊙ up_act(x'·WU)]; a' = Where(|a| <= t_hidden, 0, a); Y = a'·W2 + B2.
Every projection is read per row, so all three are re-laid out by ``q4_layout.columns``
(the same codes, scales and zero points, moved: W1 and WU per input channel, W2 per
neuron). Exact with respect to the dequantized weights in float32 (the thresholded float
FFN on ``q4_layout.dequantize``'s matrices up to float reassociation, and a neuron whose
|a| lies within rounding of t_hidden). Per token:

0. the compaction of x (serial, d_in compares): the surviving channels and their values;
1. the gate (and up) pre-activations: ``q4_pieces.column_pass`` over the surviving
   channels' rows of W1 (WU), split over d_ff — a skipped channel's codes are never read,
   nor the scales of a group of ``block`` channels without a survivor;
2. per task of ``nb`` neurons (parallel): the activations and the task's list of neurons
   with |a| > t_hidden, concatenated;
3. the down projection over the listed neurons (``column_pass`` on W2, as ``exact_q4``).

The activations use the vectorizable forms (``pieces.activation(vector=True)``: SiLU's
exp as a polynomial, relative error ~1e-7). With ``Q4Dot.INT8`` (symmetric weights;
``Q4Isa.dot``: AVX-512 VNNI, aarch64 sdot), x' and then a' are quantized to int8 per block
of ``block`` channels / neurons (scale max |v| / 127 over the block's listed values: as
ONNX Runtime's ``accuracy_level`` 4 quantizes each MatMulNBits input, skipped entries
being 0) and both passes are ``q4_pieces.column_pass_i8`` (four listed rows per int8 dot
lane; W1 and WU in one pass over the quantized list): the thresholded FFN up to the
rounding of x' and a' (and a neuron whose |a| is within that rounding of t_hidden may be
decided otherwise than in float). A format with ``int8_x`` (SparseFFN's ``accuracy_level``
4) computes that function with either dots: float32 dots then read x' and a' rounded so and
scaled back (``q4_pieces.round_list``), for CPUs without the int8 dot or weights with zero
points. Centered TEAL (XC, HC) is not taken here.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from ..q4_layout import CHUNK, Q4Format
from .exact_q4 import PARTS, Q4Tiling, check_tiling, q4_arg_names
from .pieces import activation, largest_divisor, with_args
from .q4_pieces import (
    X86_ISA,
    Q4Dot,
    Q4Isa,
    check_q4_mode,
    check_q4_shapes,
    column_pass,
    column_pass_i8,
    concat_lists,
    quantize_list,
    round_list,
)


def check_teal_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for what the int4 TEAL kernel cannot compute."""
    check_q4_mode(spec, SparseMode.TEAL)
    if dot is Q4Dot.INT8 and fmt.zero_points:
        raise CodegenError("int4 TEAL kernel, int8 dots: symmetric weights only")
    check_q4_shapes(spec, fmt)
    if spec.d_ff % CHUNK:
        raise CodegenError(f"int4 TEAL kernel: d_ff {spec.d_ff} must be a multiple of {CHUNK}")
    check_tiling(spec, tiling)


def teal_q4_primfunc(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, symbol: str,
                     dot: Q4Dot = Q4Dot.FLOAT32, isa: Q4Isa = X86_ISA):
    """The PrimFunc of the int4 TEAL kernel; arguments ``q4_arg_names(spec, fmt)``, every
    projection a ``q4_layout.Q4Columns``. Of the tiling: ``nb`` neurons per activation task;
    ``parts`` and ``cw`` the down projection's tasks and tiles, ``cw_in`` the gate pass's
    tiles (over d_ff, at most ``PARTS`` tasks). ``isa``: the CPU family's
    instructions (``q4_pieces.ISAS``); ``dot`` INT8 needs a target with ``isa.dot_features``."""
    dot = Q4Dot(dot)
    check_teal_q4(spec, fmt, tiling, dot)
    t = tiling
    D, F, DO, BLK = spec.d_in, spec.d_ff, spec.d_out, fmt.block
    GI, G = D // BLK, F // BLK  # groups of channels / of neurons sharing scales
    NB, NFB = t.nb, F // t.nb
    loop = T.parallel if t.parallel else T.serial
    gated = spec.gated
    act, up = activation(spec.activation, vector=True), activation(spec.up_activation, vector=True)
    cw1 = CHUNK * largest_divisor(F // CHUNK, (t.cw_in or t.cw) // CHUNK)
    parts1 = largest_divisor(F // cw1, PARTS)
    INT8 = dot is Q4Dot.INT8
    if INT8:
        gate_pass = column_pass_i8(F, BLK, parts1, cw1, t.ahead, t.parallel, isa)
        down = column_pass_i8(DO, BLK, t.parts, t.cw, t.ahead, t.parallel, isa)
        quantize_in, quantize_hidden = quantize_list(D, BLK), quantize_list(F, BLK)
    else:
        gate_pass = column_pass(F, BLK, parts1, cw1, t.ahead, t.scales_ahead, t.parallel, True)
        down = column_pass(DO, BLK, t.parts, t.cw, t.ahead, t.scales_ahead, t.parallel, True)
    ROUND = fmt.int8_x and not INT8  # float dots on x', a' rounded as the int8 dots see them
    round_in, round_hidden = round_list(D, BLK), round_list(F, BLK)
    # int8: quads at most (a group's last one padded) and groups of the quantized lists
    QI, QH = (D // 4 + GI, F // 4 + G) if INT8 else (1, 1)
    QGI, QG = (GI, G) if INT8 or ROUND else (1, 1)
    concat = concat_lists(F, NB)
    HR = 2 if gated else 1  # rows of H: the gate's pre-activations (and the up projection)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((D, F // 2), "uint8", align=4),
               W1S: T.Buffer((GI, F), "float32", align=4),
               W1Z: T.Optional(T.Buffer((GI, F), "uint8", align=4)),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO // 2), "uint8", align=4),
               W2S: T.Buffer((G, DO), "float32", align=4),
               W2Z: T.Optional(T.Buffer((G, DO), "uint8", align=4)),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Optional(T.Buffer((D, F // 2), "uint8", align=4)),
               WUS: T.Optional(T.Buffer((GI, F), "float32", align=4)),
               WUZ: T.Optional(T.Buffer((GI, F), "uint8", align=4)),
               TH: T.Buffer((2,), "float32", align=4), y: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32", align=4)
        Y = T.match_buffer(y, (N, DO), "float32", align=4)
        KIN = T.alloc_buffer((D + 1,), "int32")
        XIN = T.alloc_buffer((D,), "float32")
        H = T.alloc_buffer((HR, F), "float32")
        IDX = T.alloc_buffer((F,), "int32")
        VAL = T.alloc_buffer((F,), "float32")
        CNT = T.alloc_buffer((NFB,), "int32")
        LIDX = T.alloc_buffer((F + 1,), "int32")
        LVAL = T.alloc_buffer((F,), "float32")
        QROWI = T.alloc_buffer((4 * QI + 1,), "int32")
        QXI = T.alloc_buffer((QI,), "int32")
        GSI = T.alloc_buffer((QGI,), "float32")
        GCI = T.alloc_buffer((QGI,), "int32")
        GMI = T.alloc_buffer((QGI,), "float32")
        QROWH = T.alloc_buffer((4 * QH + 1,), "int32")
        QXH = T.alloc_buffer((QH,), "int32")
        GSH = T.alloc_buffer((QG,), "float32")
        GCH = T.alloc_buffer((QG,), "int32")
        GMH = T.alloc_buffer((QG,), "float32")
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            nq = T.alloc_buffer((1,), "int32", scope="local")
            # Phase 0: the surviving channels, then a sentinel in no group.
            c[0] = 0
            for k in range(D):
                if T.fabs(X[tb, k]) > TH[0]:
                    KIN[c[0]] = k
                    XIN[c[0]] = X[tb, k]
                    c[0] = c[0] + 1
            KIN[c[0]] = D
            # Phase 1: their rows of W1 (and WU), summed per group of channels.
            if INT8:
                quantize_in(KIN, XIN, c, QROWI, QXI, GSI, GCI, GMI, nq)
                gate_pass(H, 0, QROWI, QXI, GSI, GCI, nq, W1, W1S, B1, 1, WU, WUS, None)
            else:
                if ROUND:
                    round_in(KIN, XIN, c, GMI)
                gate_pass(H, 0, KIN, XIN, c, W1, W1S, W1Z, B1)
                if gated:
                    gate_pass(H, 1, KIN, XIN, c, WU, WUS, WUZ, None)
            # Phase 2: activations, the neurons above t_hidden listed.
            for fb in loop(NFB):
                # default scope: on the stack (a "local" buffer is a heap workspace)
                n = T.alloc_buffer((1,), "int32")
                for fl in T.vectorized(NB):
                    if gated:
                        H[0, fb * NB + fl] = act(H[0, fb * NB + fl]) * up(H[1, fb * NB + fl])
                    else:
                        H[0, fb * NB + fl] = act(H[0, fb * NB + fl])
                n[0] = 0
                for fl in range(NB):
                    if T.fabs(H[0, fb * NB + fl]) > TH[1]:
                        IDX[fb * NB + n[0]] = fb * NB + fl
                        VAL[fb * NB + n[0]] = H[0, fb * NB + fl]
                        n[0] = n[0] + 1
                CNT[fb] = n[0]
            concat(IDX, VAL, CNT, LIDX, LVAL, c)
            # Phase 3: the listed neurons' columns of W2.
            if INT8:
                quantize_hidden(LIDX, LVAL, c, QROWH, QXH, GSH, GCH, GMH, nq)
                down(Y, tb, QROWH, QXH, GSH, GCH, nq, W2, W2S, B2, 0, None, None, None)
            else:
                if ROUND:
                    round_hidden(LIDX, LVAL, c, GMH)
                down(Y, tb, LIDX, LVAL, c, W2, W2S, W2Z, B2)

    return with_args(kernel, q4_arg_names(spec, fmt))
