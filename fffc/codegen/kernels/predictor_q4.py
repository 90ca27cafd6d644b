"""``SparseFFN`` mode=predictor, one token, on int4 weights in MatMulNBits' layout (CPUs).

A low-rank predictor picks the neurons (``sparse_ffn_predictor``'s function): S = {i :
((x·PA)·PB + PC)_i > 0}, computed in float32 (PA [d_in, rank], PB [rank, d_ff], PC [d_ff]
stay float32); a_i = act(x·W1[:, i] + B1_i) [⊙ up_act(x·WU[:, i])] for i in S, 0 otherwise;
Y = Σ_S a_i·W2[i] + B2. W1 and WU are read per neuron, as the MatMulNBits nodes hold them;
W2 re-laid out per neuron (``q4_layout.columns``). Per token:

0. x loaded once for the row dots (``q4_pieces.RowDots.load_x``), and z = x·PA split over
   d_in in ``PARTS`` tasks with private rows, summed;
1. per task of ``nb`` neurons (parallel): the scores PC + z·PB of the task's neurons, then
   for the selected ones only their rows of W1 (and WU) — the rows of the others are never
   read — the activation, listed where it is non-zero;
2. the down projection over the listed neurons (``q4_pieces.column_pass``).

Float32 dots are exact with respect to the dequantized weights (up to float reassociation,
and a neuron whose score lies within rounding of 0); with ``Q4Dot.INT8`` the row dots (not
the predictor) run on x quantized to int8 per block, as ONNX Runtime's ``accuracy_level`` 4
computes (``Q4Isa.dot``: AVX-512 VNNI, aarch64 sdot).
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from ..q4_layout import Q4Format
from .exact_q4 import PARTS, Q4Tiling, check_tiling, q4_arg_names
from .pieces import activation, bias, with_args
from .q4_pieces import (
    I8_LANES,
    LINE,
    X86_ISA,
    Q4Dot,
    Q4Isa,
    check_int8_dots,
    check_q4_mode,
    check_q4_shapes,
    column_pass,
    concat_lists,
    neuron_rows,
    row_dots,
)


def check_predictor_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for what the int4 predictor kernel cannot compute."""
    check_q4_mode(spec, SparseMode.PREDICTOR)
    if spec.rank < 1:
        raise CodegenError("SparseFFN predictor: the spec carries no rank")
    check_q4_shapes(spec, fmt)
    check_tiling(spec, tiling)
    if dot is Q4Dot.INT8:
        check_int8_dots(spec)


def predictor_q4_primfunc(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, symbol: str,
                          dot: Q4Dot = Q4Dot.FLOAT32, isa: Q4Isa = X86_ISA):
    """The PrimFunc of the int4 predictor kernel; arguments ``q4_arg_names(spec, fmt)`` (W1,
    WU ``Q4Matrix``, W2 ``Q4Columns``). ``isa``: the CPU family's
    instructions (``q4_pieces.ISAS``); ``dot`` INT8 needs a target with ``isa.dot_features``."""
    dot = Q4Dot(dot)
    check_predictor_q4(spec, fmt, tiling, dot)
    t = tiling
    D, F, DO, BLK, RANK = spec.d_in, spec.d_ff, spec.d_out, fmt.block, spec.rank
    KB, BB = D // BLK, BLK // 2
    KZ = -(-KB // 2)
    G = F // BLK
    NB, NFB, R, P = t.nb, F // t.nb, t.rows, PARTS
    loop = T.parallel if t.parallel else T.serial
    gated = spec.gated
    act, up = activation(spec.activation), activation(spec.up_activation)
    rd = row_dots(D, fmt, dot, t.lut, isa)
    AL, NS, NXQ, NXF = rd.lanes, rd.ns, rd.nxq, rd.nxf
    phase1 = neuron_rows(NB, R, min(t.up_ahead, KB * BB // LINE), rd, fmt)
    concat = concat_lists(F, NB)
    down = column_pass(DO, BLK, t.parts, t.cw, t.ahead, t.scales_ahead, t.parallel, True)

    def activated(acc, accu, B1, j, r):
        """Neuron j's activation from its gate dot acc[r, 0] (and up dot accu[r, 0])."""
        h = act(acc[r, 0] + bias(B1, j))
        return h * up(accu[r, 0]) if gated else h

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
               WUZ: T.Optional(T.Buffer((F, KZ), "uint8", align=4)),
               PA: T.Buffer((D, RANK), "float32", align=4),
               PB: T.Buffer((RANK, F), "float32", align=4),
               PC: T.Buffer((F,), "float32", align=4), y: T.handle):
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
        Z = T.alloc_buffer((P, RANK), "float32")
        ZS = T.alloc_buffer((RANK,), "float32")
        CAND = T.alloc_buffer((F,), "int32")
        IDX = T.alloc_buffer((F,), "int32")
        VAL = T.alloc_buffer((F,), "float32")
        CNT = T.alloc_buffer((NFB,), "int32")
        LIDX = T.alloc_buffer((F + 1,), "int32")
        LVAL = T.alloc_buffer((F,), "float32")
        xs = T.meta_var((XE, XO, XEQ, XOQ, XCOR, XSC))
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            rd.load_x(lambda k: X[tb, k], xs)  # noqa: B023 (called while parsing)
            # Phase 0: the predictor's first factor, split over d_in.
            for p in loop(P):
                for r in T.vectorized(RANK):
                    Z[p, r] = T.float32(0)
                for k in range(D * p // P, D * (p + 1) // P):
                    for r in T.vectorized(RANK):
                        Z[p, r] = Z[p, r] + X[tb, k] * PA[k, r]
            for r in T.vectorized(RANK):
                ZS[r] = T.float32(0)
            for p in range(P):
                for r in T.vectorized(RANK):
                    ZS[r] = ZS[r] + Z[p, r]
            # Phase 1: scores, then the rows of the selected neurons, listed activations.
            for fb in loop(NFB):
                # default scope: small buffers on the stack, in registers (a "local" buffer
                # is a heap workspace)
                acc = T.alloc_buffer((R, AL), "float32")
                accu = T.alloc_buffer((R, AL), "float32") if gated else T.meta_var(None)
                sb = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((2,), "int32")
                for fl in T.vectorized(NB):
                    sb[fl] = PC[fb * NB + fl]
                for r in range(RANK):
                    for fl in T.vectorized(NB):
                        sb[fl] = sb[fl] + ZS[r] * PB[r, fb * NB + fl]
                n[1] = 0
                phase1.listed(fb, n, acc, accu, CAND, IDX, VAL, xs, W1, W1S, W1Z, WU, WUS, WUZ,
                              lambda fl: sb[fl] > T.float32(0),  # noqa: B023
                              lambda fl, r: activated(acc, accu, B1, fb * NB + fl, r))  # noqa: B023
                CNT[fb] = n[1]
            concat(IDX, VAL, CNT, LIDX, LVAL, c)
            # Phase 2: per tile of outputs, the listed neurons' columns, summed per group.
            down(Y, tb, LIDX, LVAL, c, W2, W2S, W2Z, B2)

    return with_args(kernel, q4_arg_names(spec, fmt))
