"""``SparseFFN`` mode=cats, one token, on int4 weights in MatMulNBits' layout (CPUs).

CATS's gate threshold (``sparse_ffn_cats``'s function, gated FFNs, ``TH = [t_in, t_gate]``,
a negative threshold keeps all): x' = Where(|x| <= t_in, 0, x); g = act(x'·W1 + B1);
neurons with |g| <= t_gate are zero; Y = (g ⊙ up_act(x'·WU))·W2 + B2. W1 and WU are read per
neuron, as the MatMulNBits nodes hold them; W2 re-laid out per neuron
(``q4_layout.columns``). ``exact_q4``'s phases with CATS's rule:

0. x' loaded once (``q4_pieces.RowDots.load_x``: de-interleaved, or quantized per block);
1. per task of ``nb`` neurons (parallel): every neuron's gate g (row dots of W1 with x'),
   then for the neurons with |g| > t_gate only the up row's dot with x' (the up rows of the
   others are never read) and the listed activation g·up_act(u) where it is non-zero;
2. the down projection over the listed neurons (``q4_pieces.column_pass``).

The input threshold zeroes entries of x' but saves no bytes here: a gate row holds a
neuron's whole input in blocks. Float32 dots are exact with respect to the dequantized
weights (up to float reassociation, and a neuron whose |g| lies within rounding of
t_gate); with ``Q4Dot.INT8`` the row dots run on x' quantized to int8 per block, as ONNX
Runtime's ``accuracy_level`` 4 computes (``Q4Isa.dot``: AVX-512 VNNI, aarch64 sdot).
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from ..q4_layout import Q4Format
from .exact_q4 import Q4Tiling, check_tiling, q4_arg_names
from .pieces import activation, with_args
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


def check_cats_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for what the int4 CATS kernel cannot compute."""
    check_q4_mode(spec, SparseMode.CATS)
    if not spec.gated:
        raise CodegenError("SparseFFN cats thresholds a gate: gated FFNs only")
    check_q4_shapes(spec, fmt)
    check_tiling(spec, tiling)
    if dot is Q4Dot.INT8:
        check_int8_dots(spec)


def cats_q4_primfunc(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, symbol: str,
                     dot: Q4Dot = Q4Dot.FLOAT32, isa: Q4Isa = X86_ISA):
    """The PrimFunc of the int4 CATS kernel; arguments ``q4_arg_names(spec, fmt)`` (W1, WU
    ``Q4Matrix``, W2 ``Q4Columns``). ``isa``: the CPU family's
    instructions (``q4_pieces.ISAS``); ``dot`` INT8 needs a target with ``isa.dot_features``."""
    dot = Q4Dot(dot)
    check_cats_q4(spec, fmt, tiling, dot)
    t = tiling
    D, F, DO, BLK = spec.d_in, spec.d_ff, spec.d_out, fmt.block
    KB, BB = D // BLK, BLK // 2
    KZ = -(-KB // 2)
    G = F // BLK
    NB, NFB, R = t.nb, F // t.nb, t.rows
    loop = T.parallel if t.parallel else T.serial
    act, up = activation(spec.activation), activation(spec.up_activation)
    rd = row_dots(D, fmt, dot, t.lut, isa)
    AL, NS, NXQ, NXF = rd.lanes, rd.ns, rd.nxq, rd.nxf
    phase1 = neuron_rows(NB, R, min(t.up_ahead, KB * BB // LINE), rd, fmt)
    concat = concat_lists(F, NB)
    down = column_pass(DO, BLK, t.parts, t.cw, t.ahead, t.scales_ahead, t.parallel, True)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, KB, BB), "uint8", align=4),
               W1S: T.Buffer((F, KB), "float32", align=4),
               W1Z: T.Optional(T.Buffer((F, KZ), "uint8", align=4)),
               B1: T.Optional(T.Buffer((F,), "float32", align=4)),
               W2: T.Buffer((F, DO // 2), "uint8", align=4),
               W2S: T.Buffer((G, DO), "float32", align=4),
               W2Z: T.Optional(T.Buffer((G, DO), "uint8", align=4)),
               B2: T.Optional(T.Buffer((DO,), "float32", align=4)),
               WU: T.Buffer((F, KB, BB), "uint8", align=4),
               WUS: T.Buffer((F, KB), "float32", align=4),
               WUZ: T.Optional(T.Buffer((F, KZ), "uint8", align=4)),
               TH: T.Buffer((2,), "float32", align=4), y: T.handle):
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
            rd.load_x(lambda k: T.if_then_else(T.fabs(X[tb, k]) > TH[0], X[tb, k],  # noqa: B023
                                               T.float32(0)), xs)
            # Phase 1: gates, then the up rows of those above t_gate, listed activations.
            for fb in loop(NFB):
                # default scope: small buffers on the stack, in registers (a "local" buffer
                # is a heap workspace)
                acc = T.alloc_buffer((R, AL), "float32")
                gate = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((2,), "int32")
                phase1.gates(fb, gate, acc, W1, W1S, W1Z, B1, xs)
                for fl in T.vectorized(NB):
                    gate[fl] = act(gate[fl])
                n[1] = 0
                phase1.listed(fb, n, acc, None, CAND, IDX, VAL, xs, WU, WUS, WUZ, None, None,
                              None, lambda fl: T.fabs(gate[fl]) > TH[1],  # noqa: B023
                              lambda fl, r: gate[fl] * up(acc[r, 0]))  # noqa: B023
                CNT[fb] = n[1]
            concat(IDX, VAL, CNT, LIDX, LVAL, c)
            # Phase 2: per tile of outputs, the listed neurons' columns, summed per group.
            down(Y, tb, LIDX, LVAL, c, W2, W2S, W2Z, B2)

    return with_args(kernel, q4_arg_names(spec, fmt))
