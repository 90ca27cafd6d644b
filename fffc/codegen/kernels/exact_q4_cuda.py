"""``SparseFFN`` mode=exact on int4 or int8 weights in MatMulNBits' layout, for CUDA: three
launches per call, ``mr`` tokens per block (1 for decoding, a few for short prompts).

The FFN ``Y = (relu(X·W1 + B1) [⊙ up(X·WU)])·W2 + B2`` (ReLU, ReGLU, dReLU) with every
projection as ONNX Runtime's ``MatMulNBits`` stores it (``q4_layout``): W1 and WU as the
nodes hold them (one row of blocks per neuron), W2 re-laid out per neuron
(``q4_layout.columns``). Arguments ``exact_q4.q4_arg_names``. The kernels are exact with
respect to the dequantized weights: each weight is ``(code − zero point)`` converted to
float32 times its float32 scale, activations and sums stay float32 (per block of codes the
differences times x are summed, then multiplied by the block's scale once), so the result
equals the float FFN on ``q4_layout.dequantize``'s matrices up to float reassociation.

The same kernels take 8-bit codes (SparseFFN's ``bits`` 8, the format's ``bits``; layout
``fffc.contract.int8``: a code a byte, zero points a byte, 128 where absent; W2 as codes
[d_ff, d_out]): a 32-bit word then holds 4 codes (byte m of word w: input, or output,
4w + m) instead of 8 nibbles, and everything below reads "codes" for "nibbles" (``Codes``
says how a format fills the words). The int4 specifics are marked as such.

A row of codes is read 32 bits at a time: int4, byte j of a row holds inputs 2j (low
nibble) and 2j + 1 (high nibble), so nibble m of word w (little-endian) is input 8w + m.
Workspace buffers (float32 per token, from the shim): ``H`` [d_ff], ``P`` [splits · d_out].

1. ``rows``: a warp per neuron (``wpb`` warps a block, ``mr`` tokens a block). Each lane
   reads pieces of ``pw`` words (4: 16 bytes, one vector load; a piece lies in one block
   of codes) lane-strided, so a warp reads 32 consecutive pieces of its row, against x
   staged in shared memory (per chunk of ``kch`` inputs, transposed so that the lanes read
   consecutive words: no bank conflicts). The lane sums of the gate are added by an
   xor-shuffle butterfly (every lane ends with the same sum, added in the same order).
   Gated: the warp then reads the up row only where the gate is positive for some token of
   the block (a warp-uniform branch: the rows of the other neurons are never read) and
   ``H = gate · up_act(up)`` where the gate is positive, else 0; dense: ``H = relu(gate)``.
2. ``down``: ``P[s] = H[:, chunk s] · W2[chunk s]``: a block owns 8·``now`` outputs
   (int8: 4·``now``; a thread per word of a neuron's column: 8 (4) outputs, 32 threads read
   128 consecutive bytes) and one chunk of whole groups of ``block`` neurons (which share
   their scales), with the chunk's H staged in shared memory. A neuron's column is read
   only where its H is non-zero for some token of the block (warp-uniform); per group, the
   columns scaled by H are summed and the sum is multiplied by the group's scales once —
   the scales (and zero points) of a group without a non-zero H are never read.
3. ``reduce`` (sparse_ffn_cuda's): ``Y = B2 + Σ_s P[s]`` in a fixed order (deterministic,
   no atomics).

With ``int8_x`` (SparseFFN's ``accuracy_level`` 4) x is rounded to int8 per block, as
``contract.int4.quantize_x`` defines it, and the gate and up dots are integer dot products.
``rows`` quantizes each staged chunk of x itself (the chunks are whole blocks; no launch
and no workspace of its own): a thread per piece takes the piece's max |x|; after a
barrier, with its block's max m, ``q = round-half-even(x · (127 / m))`` (0 where m is 0,
each step in float32), the codes packed four to a 32-bit word in shared memory — for code
word u of a piece, word 2u holds inputs 8u, 8u + 2, 8u + 4, 8u + 6 in bytes 0..3 (the
inputs of its low nibbles), word 2u + 1 the odd ones —, their sum per piece and the block's
scale ``m / 127``. Per code word the low nibbles (``& 0x0F0F0F0F``: codes 0..15 as bytes)
meet the even word and the high ones the odd word in ``__dp4a`` (four byte products added
to an int32; sm_61 and later); per piece ``Σ code·q − z·Σ q`` (exact in int32) is converted
to float32 and scaled by x's block scale and the weight's. Int8: word u of a piece holds
inputs 4u .. 4u + 3, the code word's own inputs; the codes (0..255) enter ``__dp4a`` as the
signed bytes ``code − 128`` (each byte's top bit flipped), so per piece
``Σ (code − 128)·q − (z − 128)·Σ q`` (the second term 0 without zero points), exact in
int32 as well. The result is the float FFN on the dequantized weights with x replaced by
``q · m / 127``, up to float reassociation (the products are exact). The down projection's
input H stays float32.

These are decode kernels: with many tokens a block's union of active neurons is nearly
dense and every row is read anyway. W1 and WU are read 16 bytes at a time: their base
addresses must be 16-byte aligned (ONNX Runtime's allocations are). The compile builds it
for SparseFFN's ``bits`` 4 and 8 on ``--target cuda`` (``schedules/cuda.py``: its variants).
The activations' fake quantization (the AQ input of static QDQ sites) is not applied here:
such specs are refused and the plan leaves those sites as they were on CUDA.
"""

# No ``from __future__ import annotations``: ``T.jit`` reads the kernel's parameter
# annotations (shapes and dtypes from the generator's closure) as objects.

from dataclasses import dataclass

from fffc.contract import int8
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.kinds import WeightBits

from .._tvm import T
from ..q4_layout import CHUNK, SYMMETRIC_ZERO_POINT, Q4Format
from .exact_q4 import check_int4_shapes
from .pieces import activation, ceil_div, specialize
from .routed_ffn_cuda import warp_shuffled
from .sparse_ffn import check_spec
from .sparse_ffn_cuda import CudaTiling, reduce_kernel

WARP = 32
SHARED_FLOATS = 12 << 10  # static shared memory of a block at most (48 KiB)
MAX_REGISTER_FLOATS = 128  # a down thread's sums (2 · mr · codes per word floats) at most
LOW_NIBBLES = 0x0F0F0F0F  # the low nibble of each byte of a code word
TOP_BITS = 0x80808080  # each byte's top bit: an 8-bit code ^ 0x80 is code − 128 as int8


@dataclass(frozen=True)
class Codes:
    """How a format's codes fill the 32-bit words the kernels read."""

    bits: int  # 4: two codes a byte (low nibble first); 8: one a byte
    symmetric: int  # the zero point where the node has none (8, 128)
    shift: int  # int8 dots: each code enters __dp4a as code − shift (a signed byte)

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def bytes(self, n: int) -> int:
        """Bytes of n codes."""
        return n * self.bits // 8


def codes(fmt: Q4Format) -> Codes:
    if fmt.bits is WeightBits.INT8:
        return Codes(8, int8.SYMMETRIC_ZERO_POINT, int8.SYMMETRIC_ZERO_POINT)
    return Codes(4, SYMMETRIC_ZERO_POINT, 0)


@dataclass(frozen=True)
class Q4CudaTiling:
    """Launch shape of the int4 exact kernels."""

    mr: int = 1  # tokens per block (each weight read serves all of them)
    wpb: int = 8  # warps (neurons) per rows block
    pw: int = 4  # words per lane per step of a row (4: one 16-byte load)
    x_stage_floats: int = 8192  # x staged per chunk by a rows block: tokens × inputs
    now: int = 32  # threads (column words: 8 outputs each) per down block
    splits: int = 64  # neuron chunks of the down projection (whole groups each)


def q4_cuda_tiling(spec: SparseSpec, fmt: Q4Format, mr: int = 1,
                   target_blocks: int = 528) -> Q4CudaTiling:
    """A tiling for ``mr`` tokens per block: 16-byte pieces of rows (8 bytes for int4 blocks
    of 16), down blocks of 32 column words (256 int4 outputs, 128 int8 ones), the down
    projection split into about ``target_blocks`` blocks (4 per SM of a 132-SM H100), each
    chunk at least one group."""
    c = codes(fmt)
    words = spec.d_out // c.per_word
    now = min(WARP, words)
    out_blocks = ceil_div(words, now)
    groups = spec.d_ff // fmt.block
    splits = max(1, min(ceil_div(target_blocks, out_blocks), groups))
    splits = ceil_div(groups, ceil_div(groups, splits))  # no empty chunk
    return Q4CudaTiling(mr=mr, pw=min(4, c.bytes(fmt.block) // 4), now=now, splits=splits)


def workspace(spec: SparseSpec, t: Q4CudaTiling) -> dict[str, int]:
    """Scratch buffers: name → float32 elements per token."""
    return {"H": spec.d_ff, "P": t.splits * spec.d_out}


def dp4a(a, b, c):
    """``c`` + the sum of the four products of the signed bytes of ``a`` and ``b`` (int32):
    CUDA's ``__dp4a``."""
    return T.call_pure_extern("int32", "__dp4a", a, b, c)


def _stage(spec: SparseSpec, fmt: Q4Format, t: Q4CudaTiling) -> int:
    """Inputs of x staged per chunk (a multiple of the 32 pieces a warp reads per step)."""
    step = WARP * codes(fmt).per_word * t.pw
    per_chunk = max(step, (t.x_stage_floats // t.mr) // step * step)
    return min(per_chunk, ceil_div(spec.d_in, step) * step)


def check_q4_cuda(spec: SparseSpec, fmt: Q4Format, t: Q4CudaTiling) -> None:
    """Raise CodegenError for shapes or tilings the kernels cannot compute."""
    c = codes(fmt)
    what = f"int{c.bits} CUDA kernel"
    if spec.bits and spec.bits is not fmt.bits:  # (a spec without bits: ``fmt``'s)
        raise CodegenError(f"{what}: the spec's weights have bits {int(spec.bits)}")
    if c.bits == 4:
        check_int4_shapes(spec, fmt)
    else:  # 8-bit columns: a word holds 4 outputs
        check_spec(spec)
        if spec.d_in % fmt.block or spec.d_ff % fmt.block or spec.d_out % c.per_word:
            raise CodegenError(f"{what}: d_in {spec.d_in} and d_ff {spec.d_ff} must be "
                               f"multiples of the block {fmt.block}, d_out {spec.d_out} of "
                               f"{c.per_word}")
    if spec.act_quant:
        raise CodegenError(f"{what}: fake-quantized activations (the AQ input) are not "
                           "supported")
    if t.pw not in (1, 2, 4) or c.bytes(fmt.block) % (4 * t.pw):
        raise CodegenError(f"{what}: {t.pw} words per piece do not divide a "
                           f"block of {c.bytes(fmt.block)} bytes")
    if t.mr < 1 or t.wpb < 1 or t.now < 1 or t.wpb * WARP > 1024 or t.now > 1024:
        raise CodegenError(f"{what}: tiling {t}")
    if 2 * t.mr * c.per_word > MAX_REGISTER_FLOATS:
        raise CodegenError(f"{what}: {t.mr} tokens per block spill the down sums")
    groups = spec.d_ff // fmt.block
    if ceil_div(groups, ceil_div(groups, t.splits)) != t.splits:
        raise CodegenError(f"splits={t.splits} leaves empty chunks of {groups} groups")
    kch = _stage(spec, fmt, t)  # x staged, and with int8_x its codes (a quarter of it),
    # the pieces' max |x| and sums of codes (2 per piece), the blocks' scales
    pieces = kch // (c.per_word * t.pw)
    if t.mr * (kch + (kch // 4 + 2 * pieces + kch // fmt.block if fmt.int8_x else 0)) \
            > SHARED_FLOATS:
        raise CodegenError(f"{what}: x stage of {t} exceeds shared memory")
    if t.mr * ceil_div(groups, t.splits) * fmt.block > SHARED_FLOATS:
        raise CodegenError(f"{what}: H stage of {t} exceeds shared memory")


def rows_kernel(spec: SparseSpec, fmt: Q4Format, t: Q4CudaTiling, symbol: str):
    """Gate rows of every neuron, up rows where the gate is positive: ``H``."""
    D, F, BLK, MR, WPB, PW = spec.d_in, spec.d_ff, fmt.block, t.mr, t.wpb, t.pw
    C = codes(fmt)
    CPW, BITS, MASK = C.per_word, C.bits, C.mask
    KB = D // BLK  # blocks of a row
    KZ = -(-KB // 2) if BITS == 4 else KB  # zero point bytes of a row
    RW = D // CPW  # words of a row
    PE = CPW * PW  # inputs of a piece
    XPC = CPW // 4  # int8 x words per code word (4 inputs a word)
    KCH = _stage(spec, fmt, t)
    KCP = KCH // PE  # pieces per chunk
    NCH = ceil_div(D, KCH)
    STAGE = ceil_div(MR * KCH, WARP * WPB)
    gated, up = spec.gated, activation(spec.up_activation)
    ZP, I8 = fmt.zero_points, fmt.int8_x
    PPB = BLK // PE  # pieces per block (a chunk is whole blocks: BLK divides KCH)
    STAGE_P = ceil_div(MR * KCP, WARP * WPB)  # I8: pieces of the chunk per thread

    def zero_point(WZ, n, kb):
        """The zero point of block kb of row n (int32): a nibble (block 2b in the low one of
        byte b) or a byte; the format's midpoint without zero points."""
        if not ZP:
            return T.int32(C.symmetric)
        if BITS == 8:
            return T.Cast("int32", WZ[n, kb])
        return (T.Cast("int32", WZ[n, kb // 2]) >> ((kb % 2) * 4)) & 15

    @T.inline
    def dots(acc, W, WS, WZ, xs, part, wv, zb, n, c, tx):
        """acc[t] += the chunk c's share of row n's dot with token t's staged x: per piece
        of PW words (one block), Σ (code − z) · x, times the block's scale."""
        Ww = T.decl_buffer((F * RW,), "uint32", data=W.data)
        for kk in range(KCP // WARP):
            p = T.meta_var(c * KCP + kk * WARP + tx)
            if p * PE < D:
                kb = T.meta_var(p * PE // BLK)
                if PW == 1:
                    wv[0] = Ww[n * RW + p]
                else:
                    T.buffer_store(wv, Ww.vload([n * RW + p * PW], f"uint32x{PW}"),
                                   [T.ramp(0, 1, PW)])
                zb[0] = zero_point(WZ, n, kb)
                for tt in T.unroll(MR):
                    part[tt] = T.float32(0)
                for u in T.unroll(PW):
                    for m in T.unroll(CPW):
                        code = T.meta_var(T.Cast("int32", (wv[u] >> T.uint32(BITS * m)) & T.uint32(MASK)))
                        for tt in T.unroll(MR):
                            part[tt] = part[tt] + T.Cast("float32", code - zb[0]) * xs[tt, u * CPW + m, kk * WARP + tx]
                for tt in T.unroll(MR):
                    acc[tt] = acc[tt] + WS[n, kb] * part[tt]

    @T.inline
    def dots_i8(acc, W, WS, WZ, xq, xsc, xqc, isum, wv, zb, n, c, tx):
        """dots with x rounded to int8 (``quantize``'s xq, xsc, xqc): per piece, Σ code·q by
        ``__dp4a`` (int4: low nibbles with the even inputs' word, high ones with the odd;
        int8: each code word's bytes as code − 128, with the word of the same 4 inputs),
        minus (z − shift)·Σ q, times x's block scale and the weight's."""
        Ww = T.decl_buffer((F * RW,), "uint32", data=W.data)
        for kk in range(KCP // WARP):
            p = T.meta_var(c * KCP + kk * WARP + tx)
            if p * PE < D:
                kb = T.meta_var(p * PE // BLK)
                if PW == 1:
                    wv[0] = Ww[n * RW + p]
                else:
                    T.buffer_store(wv, Ww.vload([n * RW + p * PW], f"uint32x{PW}"),
                                   [T.ramp(0, 1, PW)])
                zb[0] = zero_point(WZ, n, kb) - C.shift
                for tt in T.unroll(MR):
                    isum[tt] = 0
                for u in T.unroll(PW):
                    if BITS == 8:
                        sw = T.meta_var(T.Cast("int32", wv[u] ^ T.uint32(TOP_BITS)))
                        for tt in T.unroll(MR):
                            isum[tt] = dp4a(sw, xq[tt, u, kk * WARP + tx], isum[tt])
                    else:
                        lo = T.meta_var(T.Cast("int32", wv[u] & T.uint32(LOW_NIBBLES)))
                        hi = T.meta_var(T.Cast("int32", (wv[u] >> T.uint32(4)) & T.uint32(LOW_NIBBLES)))
                        for tt in T.unroll(MR):
                            isum[tt] = dp4a(hi, xq[tt, 2 * u + 1, kk * WARP + tx],
                                            dp4a(lo, xq[tt, 2 * u, kk * WARP + tx], isum[tt]))
                for tt in T.unroll(MR):
                    acc[tt] = acc[tt] + WS[n, kb] * (
                        T.Cast("float32", isum[tt] - zb[0] * xqc[tt, kk * WARP + tx])
                        * xsc[tt, (kk * WARP + tx) // PPB])

    @T.inline
    def stage(xs, X, N, c, by, ty, tx):
        """Chunk c of the block's tokens' x into shared memory, element k of piece j at
        xs[token, k, j] (the lanes' reads of a piece position are consecutive)."""
        for i in range(STAGE):
            e = T.meta_var((i * WPB + ty) * WARP + tx)
            if e < MR * KCH:
                xs[e // KCH, e % KCH % PE, e % KCH // PE] = X[T.min(by * MR + e // KCH, N - 1), T.min(c * KCH + e % KCH, D - 1)]

    @T.inline
    def quantize(xs, xq, xpm, xsc, xqc, q, qsum, ty, tx):
        """The staged chunk rounded to int8 per block (``contract.int4.quantize_x``): a
        thread per piece takes its max |x| (xpm), then, after a barrier, its block's
        (``m``): the codes ``round-half-even(x · (127 / m))`` (0 where m is 0) packed four
        to a word, for code word u of piece j: int4, word 2u holding inputs 8u, 8u + 2,
        8u + 4, 8u + 6 of the piece (the low nibbles of code word u), word 2u + 1 the odd
        ones; int8, word u inputs 4u .. 4u + 3 (the code word's bytes); at xq[token, ·, j];
        their sum at xqc[token, j]; the block's scale m / 127 at xsc (by its first piece).
        Ends with a barrier."""
        for i in range(STAGE_P):
            e = T.meta_var((i * WPB + ty) * WARP + tx)
            if e < MR * KCP:
                q[CPW] = T.float32(0)
                for k in range(PE):
                    q[CPW] = T.max(q[CPW], T.fabs(xs[e // KCP, k, e % KCP]))
                xpm[e // KCP, e % KCP] = q[CPW]
        T.tvm_storage_sync("shared")
        for i in range(STAGE_P):
            e = T.meta_var((i * WPB + ty) * WARP + tx)
            tt = T.meta_var(e // KCP)
            j = T.meta_var(e % KCP)
            if e < MR * KCP:
                q[CPW] = T.float32(0)  # the block's max |x|
                for b in range(PPB):
                    q[CPW] = T.max(q[CPW], xpm[tt, j // PPB * PPB + b])
                q[CPW + 1] = T.if_then_else(q[CPW] > T.float32(0),
                                            T.float32(127) / q[CPW], T.float32(0))
                if j % PPB == 0:
                    xsc[tt, j // PPB] = q[CPW] / T.float32(127)
                qsum[0] = 0
                for u in T.unroll(PW):
                    for m in T.unroll(CPW):
                        q[m] = T.nearbyint(xs[tt, u * CPW + m, j] * q[CPW + 1])
                        qsum[0] = qsum[0] + T.Cast("int32", q[m])
                    for h in T.unroll(XPC):  # int4: even inputs, then odd ones; byte i of
                        # word h is q[h + XPC·i], the top byte by a product (no shift into
                        # the sign bit)
                        xq[tt, XPC * u + h, j] = (
                            (T.Cast("int32", q[h]) & 255)
                            + ((T.Cast("int32", q[h + XPC]) & 255) << 8)
                            + ((T.Cast("int32", q[h + 2 * XPC]) & 255) << 16)
                            + T.Cast("int32", q[h + 3 * XPC]) * (1 << 24))
                xqc[tt, j] = qsum[0]
        T.tvm_storage_sync("shared")

    @T.inline
    def warp_sum(acc):
        """Every lane's acc[t] becomes the warp's sum (xor butterfly)."""
        for tt in T.unroll(MR):
            for s in T.unroll(5):
                acc[tt] = acc[tt] + warp_shuffled(acc[tt], s)

    @T.jit
    def kernel(x: T.handle, W1: T.Buffer((F, KB, C.bytes(BLK)), "uint8"),
               W1S: T.Buffer((F, KB), "float32"),
               W1Z: T.Optional(T.Buffer((F, KZ), "uint8")),
               B1: T.Optional(T.Buffer((F,), "float32")),
               WU: T.Optional(T.Buffer((F, KB, C.bytes(BLK)), "uint8")),
               WUS: T.Optional(T.Buffer((F, KB), "float32")),
               WUZ: T.Optional(T.Buffer((F, KZ), "uint8")), h: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        X = T.match_buffer(x, (N, D), "float32")
        H = T.match_buffer(h, (N, F), "float32")
        for bx in T.thread_binding(ceil_div(F, WPB), thread="blockIdx.x"):
            for by in T.thread_binding((N + MR - 1) // MR, thread="blockIdx.y"):
                for ty in T.thread_binding(WPB, thread="threadIdx.y"):
                    for tx in T.thread_binding(WARP, thread="threadIdx.x"):
                        acc = T.alloc_buffer((MR,), "float32", scope="local")
                        g = T.alloc_buffer((MR,), "float32", scope="local")
                        part = T.alloc_buffer((MR,), "float32", scope="local")
                        wv = T.alloc_buffer((PW,), "uint32", scope="local")
                        on = T.alloc_buffer((1,), "int32", scope="local")
                        zb = T.alloc_buffer((1,), "int32", scope="local")
                        xs = T.alloc_buffer((MR, PE, KCP), "float32", scope="shared")
                        if I8:
                            isum = T.alloc_buffer((MR,), "int32", scope="local")
                            # a piece's rounded x, then its block's max |x| and 127 / max
                            q = T.alloc_buffer((CPW + 2,), "float32", scope="local")
                            qsum = T.alloc_buffer((1,), "int32", scope="local")
                            xq = T.alloc_buffer((MR, XPC * PW, KCP), "int32", scope="shared")
                            xpm = T.alloc_buffer((MR, KCP), "float32", scope="shared")
                            xsc = T.alloc_buffer((MR, KCP // PPB), "float32", scope="shared")
                            xqc = T.alloc_buffer((MR, KCP), "int32", scope="shared")
                        n = T.meta_var(T.min(bx * WPB + ty, F - 1))  # past F: row F - 1,
                        # so that every lane reaches the shuffles; nothing written

                        for tt in T.unroll(MR):
                            acc[tt] = T.float32(0)
                        for c in range(NCH):
                            stage(xs, X, N, c, by, ty, tx)
                            T.tvm_storage_sync("shared")
                            if I8:
                                quantize(xs, xq, xpm, xsc, xqc, q, qsum, ty, tx)
                                dots_i8(acc, W1, W1S, W1Z, xq, xsc, xqc, isum, wv, zb, n, c, tx)
                            else:
                                dots(acc, W1, W1S, W1Z, xs, part, wv, zb, n, c, tx)
                            if NCH > 1:
                                T.tvm_storage_sync("shared")
                        warp_sum(acc)
                        on[0] = 0
                        for tt in T.unroll(MR):
                            g[tt] = acc[tt] + B1[n] if B1 is not None else acc[tt]
                            if g[tt] > T.float32(0):
                                on[0] = 1
                        if gated:
                            for tt in T.unroll(MR):
                                acc[tt] = T.float32(0)
                            for c in range(NCH):
                                if NCH > 1:
                                    stage(xs, X, N, c, by, ty, tx)
                                    T.tvm_storage_sync("shared")
                                    if I8:
                                        quantize(xs, xq, xpm, xsc, xqc, q, qsum, ty, tx)
                                if on[0] != 0:  # warp-uniform: every lane has the sums
                                    if I8:
                                        dots_i8(acc, WU, WUS, WUZ, xq, xsc, xqc, isum, wv, zb, n, c, tx)
                                    else:
                                        dots(acc, WU, WUS, WUZ, xs, part, wv, zb, n, c, tx)
                                if NCH > 1:
                                    T.tvm_storage_sync("shared")
                            warp_sum(acc)
                        if tx == 0 and bx * WPB + ty < F:
                            for tt in T.unroll(MR):
                                if by * MR + tt < N:
                                    if gated:
                                        H[by * MR + tt, n] = T.if_then_else(
                                            g[tt] > T.float32(0), g[tt] * up(acc[tt]), T.float32(0))
                                    else:
                                        H[by * MR + tt, n] = T.max(g[tt], T.float32(0))

    return specialize(kernel, W1Z=ZP, B1=spec.has_b1, WU=gated, WUS=gated, WUZ=gated and ZP)


def down_kernel(spec: SparseSpec, fmt: Q4Format, t: Q4CudaTiling, symbol: str):
    """``P[n, s] = H[n, chunk s] · W2[chunk s]`` over the non-zero H, per group of neurons."""
    F, DO, BLK, MR, NOW, S = spec.d_ff, spec.d_out, fmt.block, t.mr, t.now, t.splits
    G = F // BLK
    GC = ceil_div(G, S)  # groups per chunk
    FC = GC * BLK  # neurons per chunk
    C = codes(fmt)
    CPW, BITS, MASK = C.per_word, C.bits, C.mask
    DW = DO // CPW  # words of a column
    HALF = CHUNK // 2
    STAGE = ceil_div(MR * FC, NOW)
    ZP = fmt.zero_points

    def out(wo, r):
        """The output of code r of column word wo. int4: byte b = r // 2 of the word is
        byte 4·(wo % 4) + b of chunk wo // 4, its low nibble the chunk's output of that
        index, its high one that index + 16; int8: byte r is output 4·wo + r."""
        if BITS == 8:
            return wo * CPW + r
        return wo // 4 * CHUNK + (r % 2) * HALF + wo % 4 * 4 + r // 2

    @T.jit
    def kernel(h: T.handle, W2: T.Buffer((F, C.bytes(DO)), "uint8"),
               W2S: T.Buffer((G, DO), "float32"),
               W2Z: T.Optional(T.Buffer((G, DO), "uint8")), p: T.handle):
        T.func_attr({"global_symbol": symbol, "tirx.noalias": True})
        N = T.int32()
        H = T.match_buffer(h, (N, F), "float32")
        P = T.match_buffer(p, (N, S, DO), "float32")
        for bx in T.thread_binding(ceil_div(DW, NOW), thread="blockIdx.x"):
            for bs in T.thread_binding(S, thread="blockIdx.y"):
                for bz in T.thread_binding((N + MR - 1) // MR, thread="blockIdx.z"):
                    for tx in T.thread_binding(NOW, thread="threadIdx.x"):
                        tot = T.alloc_buffer((MR, CPW), "float32", scope="local")
                        grp = T.alloc_buffer((MR, CPW), "float32", scope="local")
                        hv = T.alloc_buffer((MR,), "float32", scope="local")
                        z = T.alloc_buffer((CPW,), "int32", scope="local")
                        wv = T.alloc_buffer((1,), "uint32", scope="local")
                        nz = T.alloc_buffer((1,), "int32", scope="local")
                        seen = T.alloc_buffer((1,), "int32", scope="local")
                        hs = T.alloc_buffer((MR, FC), "float32", scope="shared")
                        W2w = T.decl_buffer((F * DW,), "uint32", data=W2.data)
                        wo = T.meta_var(T.min(bx * NOW + tx, DW - 1))  # past the column:
                        # its last word, nothing written
                        for i in range(STAGE):
                            e = T.meta_var(i * NOW + tx)
                            if e < MR * FC:
                                hs[e // FC, e % FC] = T.if_then_else(
                                    bz * MR + e // FC < N and bs * FC + e % FC < F,
                                    H[T.min(bz * MR + e // FC, N - 1), T.min(bs * FC + e % FC, F - 1)],
                                    T.float32(0))
                        T.tvm_storage_sync("shared")
                        for tt in T.unroll(MR):
                            for r in T.unroll(CPW):
                                tot[tt, r] = T.float32(0)
                        for gl in range(GC):
                            if bs * GC + gl < G:  # block-uniform: the last chunk's end
                                seen[0] = 0
                                for tt in T.unroll(MR):
                                    for r in T.unroll(CPW):
                                        grp[tt, r] = T.float32(0)
                                for i in range(BLK):
                                    nz[0] = 0
                                    for tt in T.unroll(MR):
                                        hv[tt] = hs[tt, gl * BLK + i]
                                        if hv[tt] != T.float32(0):
                                            nz[0] = 1
                                    if nz[0] != 0:  # block-uniform: H from shared memory
                                        if seen[0] == 0:
                                            seen[0] = 1
                                            for r in T.unroll(CPW):
                                                z[r] = T.Cast("int32", W2Z[bs * GC + gl, out(wo, r)]) if ZP else T.int32(C.symmetric)
                                        wv[0] = W2w[(bs * FC + gl * BLK + i) * DW + wo]
                                        for r in T.unroll(CPW):
                                            for tt in T.unroll(MR):
                                                grp[tt, r] = grp[tt, r] + hv[tt] * T.Cast(
                                                    "float32", T.Cast("int32", (wv[0] >> T.uint32(BITS * r)) & T.uint32(MASK)) - z[r])
                                if seen[0] != 0:  # the group's scales, once
                                    for r in T.unroll(CPW):
                                        for tt in T.unroll(MR):
                                            tot[tt, r] = tot[tt, r] + W2S[bs * GC + gl, out(wo, r)] * grp[tt, r]
                        if bx * NOW + tx < DW:
                            for tt in T.unroll(MR):
                                if bz * MR + tt < N:
                                    for r in T.unroll(CPW):
                                        P[bz * MR + tt, bs, out(wo, r)] = tot[tt, r]

    return specialize(kernel, W2Z=ZP)


def exact_q4_cuda_funcs(spec: SparseSpec, fmt: Q4Format, tiling: Q4CudaTiling,
                        prefix: str) -> dict:
    """PrimFuncs of the exact kernels on ``fmt``'s codes (int4 or int8), by global symbol,
    in launch order; their parameters are named as ``exact_q4.q4_arg_names(spec, fmt)``
    (the same names for both widths) and ``workspace``."""
    check_q4_cuda(spec, fmt, tiling)
    return {f"{prefix}_rows": rows_kernel(spec, fmt, tiling, f"{prefix}_rows"),
            f"{prefix}_down": down_kernel(spec, fmt, tiling, f"{prefix}_down"),
            f"{prefix}_reduce": reduce_kernel(spec, CudaTiling(splits=tiling.splits),
                                              f"{prefix}_reduce")}

