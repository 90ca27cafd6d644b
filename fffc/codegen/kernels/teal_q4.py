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

The input-sparse pass scales each channel's row by its float value, so there is no int8-dot
variant. Centered TEAL (XC, HC) is not taken here.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from ..q4_layout import CHUNK, Q4Format
from .exact_q4 import PARTS, Q4Tiling, check_tiling
from .pieces import activation, largest_divisor, with_args
from .q4_pieces import (
    Q4Dot,
    check_q4_mode,
    check_q4_shapes,
    column_pass,
    concat_lists,
    q4_arg_names,
)


def check_teal_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for what the int4 TEAL kernel cannot compute."""
    check_q4_mode(spec, SparseMode.TEAL)
    if dot is not Q4Dot.FLOAT32:
        raise CodegenError("int4 TEAL kernel: float32 dots only (x scales whole rows)")
    check_q4_shapes(spec, fmt)
    if spec.d_ff % CHUNK:
        raise CodegenError(f"int4 TEAL kernel: d_ff {spec.d_ff} must be a multiple of {CHUNK}")
    check_tiling(spec, tiling)


def teal_q4_primfunc(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, symbol: str,
                     dot: Q4Dot = Q4Dot.FLOAT32):
    """The PrimFunc of the int4 TEAL kernel; arguments ``q4_arg_names(spec, fmt)``, every
    projection a ``q4_layout.Q4Columns``. Of the tiling: ``nb`` neurons per activation task;
    ``parts`` and ``cw`` the down projection's tasks and tiles (the gate pass: tiles as wide
    over d_ff, at most ``PARTS`` tasks)."""
    dot = Q4Dot(dot)
    check_teal_q4(spec, fmt, tiling, dot)
    t = tiling
    D, F, DO, BLK = spec.d_in, spec.d_ff, spec.d_out, fmt.block
    GI, G = D // BLK, F // BLK  # groups of channels / of neurons sharing scales
    NB, NFB = t.nb, F // t.nb
    loop = T.parallel if t.parallel else T.serial
    gated = spec.gated
    act, up = activation(spec.activation), activation(spec.up_activation)
    cw1 = CHUNK * largest_divisor(F // CHUNK, t.cw // CHUNK)
    gate_pass = column_pass(F, BLK, largest_divisor(F // cw1, PARTS), cw1, t.ahead,
                            t.scales_ahead, t.parallel)
    down = column_pass(DO, BLK, t.parts, t.cw, t.ahead, t.scales_ahead, t.parallel)
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
        for tb in range(N):
            c = T.alloc_buffer((1,), "int32", scope="local")
            # Phase 0: the surviving channels, then a sentinel in no group.
            c[0] = 0
            for k in range(D):
                if T.fabs(X[tb, k]) > TH[0]:
                    KIN[c[0]] = k
                    XIN[c[0]] = X[tb, k]
                    c[0] = c[0] + 1
            KIN[c[0]] = D
            # Phase 1: their rows of W1 (and WU), summed per group of channels.
            gate_pass(H, 0, KIN, XIN, c, W1, W1S, W1Z, B1)
            if gated:
                gate_pass(H, 1, KIN, XIN, c, WU, WUS, WUZ, None)
            # Phase 2: activations, the neurons above t_hidden listed.
            for fb in loop(NFB):
                hb = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((1,), "int32", scope="local")
                for fl in T.vectorized(NB):
                    if gated:
                        hb[fl] = act(H[0, fb * NB + fl]) * up(H[1, fb * NB + fl])
                    else:
                        hb[fl] = act(H[0, fb * NB + fl])
                n[0] = 0
                for fl in range(NB):
                    if T.fabs(hb[fl]) > TH[1]:
                        IDX[fb * NB + n[0]] = fb * NB + fl
                        VAL[fb * NB + n[0]] = hb[fl]
                        n[0] = n[0] + 1
                CNT[fb] = n[0]
            concat(IDX, VAL, CNT, LIDX, LVAL, c)
            # Phase 3: the listed neurons' columns of W2.
            down(Y, tb, LIDX, LVAL, c, W2, W2S, W2Z, B2)

    return with_args(kernel, q4_arg_names(spec, fmt))
