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
register permute) come from the family's ``Q4Isa`` (``q4_pieces.ISAS``); the tiling
(``q4_tiling``) follows the target's vector width. Its row dots, x's load, the lists'
concatenation and the column pass are ``q4_pieces``', shared with the modes' int4 kernels.

Skipped neurons cost nothing beyond their gate. The compile builds it for SparseFFN's
``bits`` 4 (each CPU family's ``Q4Plan``: ``schedules/``), the shim passing the op's int4
inputs in ``q4_arg_names`` order.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from dataclasses import dataclass, replace

from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import SparseMode

from .._tvm import T
from ..q4_layout import CHUNK, Q4Format
from .pieces import activation, largest_divisor, with_args
from .q4_pieces import (
    ARM_ISA,
    I8_LANES,
    ISAS,
    LINE,
    LUT_LANES,
    STEP_BYTES,
    X86_ISA,
    Q4Dot,
    Q4Isa,
    check_int8_dots,
    check_q4_shapes,
    column_pass,
    concat_lists,
    neuron_rows,
    q4_inputs,
    row_dots,
)
from .sparse_ffn import check_spec

__all__ = ["ARM_ISA", "INT4", "ISAS", "X86_ISA", "Q4Dot", "Q4Isa", "Q4Plan", "Q4Tiling",
           "check_int4_shapes", "check_q4", "exact_q4_primfunc", "int4_spec", "int4_tiling", "plan_dot",
           "q4_arg_names", "q4_inputs", "q4_tiling", "register_tiling"]

INT4 = "int4"  # the kernel variant's name (one variant serves every token count)


@dataclass(frozen=True)
class Q4Tiling:
    """Loop tiling of the int4 kernels (``exact_q4`` and the modes' kernels)."""

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
    cw_in: int = 0  # TEAL: outputs per register tile of the input-sparse gate pass (over
    # d_ff; 0: as cw)


ROWS = 4
TASKS = 32  # phase-1 tasks at most: load balance over the threads
PARTS = 4  # phase-2 tasks at most
SERIAL_MAX_MACS = 1 << 16


def plan_dot(spec: SparseSpec, int8_dots: bool) -> Q4Dot:
    """The dots of ``spec``'s kernel on a CPU that has the int8 dot or not: int8 where x is
    rounded to int8 anyway (``spec.int8_x``) and the kernel takes them (d_in a multiple of
    two steps; TEAL's int8 column passes: symmetric codes), else float32 (on x rounded as
    well: ``Q4Format.int8_x``)."""
    teal_zero_points = spec.mode is SparseMode.TEAL and spec.zero_points
    if (spec.int8_x and int8_dots and spec.d_in % (2 * STEP_BYTES) == 0
            and not teal_zero_points):
        return Q4Dot.INT8
    return Q4Dot.FLOAT32


@dataclass(frozen=True)
class Q4Plan:
    """A schedule family's int4 variant: its tiling, its CPU family's instructions and the
    dots it computes (what the int4 generators take besides the spec)."""

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


def register_tiling(spec: SparseSpec, lanes: int) -> Q4Tiling:
    """The modes' kernels' tiling: ``q4_tiling``'s, with column-pass tiles of 8 vectors
    (``cw`` over d_out, ``cw_in`` over d_ff), whose sums (two sets) fit the vector
    registers: their passes keep them there (``q4_pieces.vector_registers``)."""
    t = q4_tiling(spec, lanes)
    cw = CHUNK * largest_divisor(spec.d_out // CHUNK, max(1, 8 * lanes // CHUNK))
    cw_in = CHUNK * largest_divisor(spec.d_ff // CHUNK, max(1, 8 * lanes // CHUNK))
    return replace(t, cw=cw, cw_in=cw_in, parts=largest_divisor(spec.d_out // cw, PARTS))


def int4_tiling(spec: SparseSpec, lanes: int) -> Q4Tiling:
    """The tiling of ``spec``'s int4 kernel (its mode's): ``q4_tiling`` for exact,
    ``register_tiling`` for the modes' kernels."""
    return (q4_tiling if spec.mode is SparseMode.EXACT else register_tiling)(spec, lanes)


def int4_spec(spec: SparseSpec, fmt: Q4Format) -> SparseSpec:
    """``spec`` with int4 weights stored as ``fmt`` says."""
    return replace(spec, bits=4, block=fmt.block, zero_points=fmt.zero_points)


def q4_arg_names(spec: SparseSpec, fmt: Q4Format) -> list[str]:
    """The kernel's arguments: each projection as codes, scales (S) and, with zero points, Z,
    then the mode's inputs (TH; PA, PB, PC) (SparseSpec's int4 argument order)."""
    return int4_spec(spec, fmt).arg_names()


def check_int4_shapes(spec: SparseSpec, fmt: Q4Format) -> None:
    """Raise CodegenError for an FFN the int4 exact kernels (every target's) cannot take."""
    check_spec(spec)  # exact, ReLU gate, the up activations
    check_q4_shapes(spec, fmt)


def check_tiling(spec: SparseSpec, tiling: Q4Tiling) -> None:
    """Raise CodegenError where ``tiling`` does not divide ``spec``'s shapes."""
    t = tiling
    if spec.d_ff % t.nb or t.nb % t.rows or t.cw % CHUNK or spec.d_out % (t.parts * t.cw):
        raise CodegenError(f"int4 kernel: tiling {t} does not divide {spec}")


def check_q4(spec: SparseSpec, fmt: Q4Format, tiling: Q4Tiling, dot: Q4Dot) -> None:
    """Raise CodegenError for shapes the int4 exact kernel cannot compute."""
    check_int4_shapes(spec, fmt)
    check_tiling(spec, tiling)
    if dot is Q4Dot.INT8:
        check_int8_dots(spec)


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
    G = F // BLK  # groups of neurons sharing the down projection's scales
    NB, NFB, R = t.nb, F // t.nb, t.rows
    UP_AHEAD = min(t.up_ahead, KB * BB // LINE)
    loop = T.parallel if t.parallel else T.serial
    gated, up = spec.gated, activation(spec.up_activation)
    rd = row_dots(D, fmt, dot, t.lut, isa)
    AL, NS, NXQ, NXF = rd.lanes, rd.ns, rd.nxq, rd.nxf
    phase1 = neuron_rows(NB, R, UP_AHEAD, rd, fmt)
    concat = concat_lists(F, NB)
    down = column_pass(DO, BLK, t.parts, t.cw, t.ahead, t.scales_ahead, t.parallel)

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
            rd.load_x(lambda k: X[tb, k], xs)  # noqa: B023 (called while parsing)
            # Phase 1: gates, then the up rows of the positive ones, listed activations.
            for fb in loop(NFB):
                acc = T.alloc_buffer((R, AL), "float32", scope="local")
                gate = T.alloc_buffer((NB,), "float32", scope="local")
                n = T.alloc_buffer((2,), "int32", scope="local")
                phase1.gates(fb, gate, acc, W1, W1S, W1Z, B1, xs)
                n[1] = 0
                if gated:
                    phase1.listed(fb, n, acc, None, CAND, IDX, VAL, xs, WU, WUS, WUZ, None,
                                  None, None, lambda fl: gate[fl] > T.float32(0),  # noqa: B023
                                  lambda fl, r: gate[fl] * up(acc[r, 0]))  # noqa: B023
                else:
                    for fl in range(NB):
                        if gate[fl] > T.float32(0):
                            IDX[fb * NB + n[1]] = fb * NB + fl
                            VAL[fb * NB + n[1]] = gate[fl]
                            n[1] = n[1] + 1
                CNT[fb] = n[1]
            concat(IDX, VAL, CNT, LIDX, LVAL, c)
            # Phase 2: per tile of outputs, the listed neurons' columns, summed per group.
            down(Y, tb, LIDX, LVAL, c, W2, W2S, W2Z, B2)

    return with_args(kernel, q4_arg_names(spec, fmt))
