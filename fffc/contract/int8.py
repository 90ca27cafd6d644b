"""Int8 weights as SparseFFN's ``bits`` 8 takes them (NumPy only): ONNX Runtime's
``com.microsoft::MatMulNBits`` layout with ``bits`` 8, and the compile-time re-layout of a
down projection so that a neuron's column is contiguous.

A projection ``x·W`` with ``W [K, N]`` stored by MatMulNBits (bits 8) holds, per output row
n and block b of ``block`` inputs (ONNX Runtime's MatMulNBitsQuantizer and the GenAI
builder's ``-p int8`` write exactly this; checked against ONNX Runtime in the tests):

* ``codes [N, K/block, block]`` uint8, one code a byte, input ``b·block + i`` in byte i;
* ``scales [N, K/block]`` float32 (negative ones occur: the symmetric quantizer divides by
  the block's entry of largest magnitude, with its sign);
* ``zero_points [N, K/block]`` uint8, one a byte, or none: every zero point is then 128;

and ``W[k, n] = (code − zero point) · scale``. Gate and up projections (N = d_ff) hold one
contiguous row per neuron as they are; ``columns`` re-lays a down projection (K = d_ff) out
per neuron with the same codes, scales and zero points, moved (codes ``[d_ff, d_out]``, one
a byte in output order; scales and zero points ``[d_ff/block, d_out]``), so every
dequantized weight is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYMMETRIC_ZERO_POINT = 128  # MatMulNBits' zero point where the node has none (bits 8)


@dataclass(frozen=True)
class Q8Matrix:
    """One projection ``W [K, N]`` as a MatMulNBits node with ``bits`` 8 stores it."""

    codes: np.ndarray  # [N, K/block, block] uint8
    scales: np.ndarray  # [N, K/block] float32
    zero_points: np.ndarray | None  # [N, K/block] uint8; None: symmetric (128)
    k: int
    block: int

    def __post_init__(self) -> None:
        n, kb, width = self.codes.shape
        if self.k % self.block or kb != self.k // self.block or width != self.block:
            raise ValueError(f"int8 codes {self.codes.shape}: expected [N, {self.k}/"
                             f"{self.block}, {self.block}] (K a multiple of the block)")
        if self.scales.shape != (n, kb):
            raise ValueError(f"int8 scales {self.scales.shape}: expected {(n, kb)}")
        if self.zero_points is not None and self.zero_points.shape != (n, kb):
            raise ValueError(f"int8 zero points {self.zero_points.shape}: expected {(n, kb)}")

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def blocks(self) -> int:
        return self.k // self.block


def codes(m: Q8Matrix) -> np.ndarray:
    """The codes as int32 ``[N, K]``."""
    return np.asarray(m.codes, np.uint8).reshape(m.n, m.k).astype(np.int32)


def zero_points(m: Q8Matrix) -> np.ndarray:
    """The zero points as int32 ``[N, K/block]`` (128 where the node has none)."""
    if m.zero_points is None:
        return np.full((m.n, m.blocks), SYMMETRIC_ZERO_POINT, np.int32)
    return np.asarray(m.zero_points, np.uint8).astype(np.int32)


def dequantize(m: Q8Matrix) -> np.ndarray:
    """``W [K, N]`` float32: the integer difference code − zero point, converted, times the
    float32 scale (one rounding: the values MatMulNBits' own dequantization gives)."""
    z = np.repeat(zero_points(m), m.block, axis=1)
    s = np.repeat(np.asarray(m.scales, np.float32), m.block, axis=1)
    return np.ascontiguousarray(((codes(m) - z).astype(np.float32) * s).T)


@dataclass(frozen=True)
class Q8Columns:
    """A down projection (K = d_ff, N = d_out) re-laid out per neuron: ``codes [d_ff,
    d_out]`` uint8 (row j: neuron j's column); ``scales [d_ff/block, d_out]`` float32
    (neuron j uses row j // block); ``zero_points [d_ff/block, d_out]`` uint8 or None
    (symmetric: 128)."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    block: int

    @property
    def d_ff(self) -> int:
        return self.codes.shape[0]

    @property
    def d_out(self) -> int:
        return self.codes.shape[1]


def columns(m: Q8Matrix) -> Q8Columns:
    """The down projection ``m`` (K = d_ff, N = d_out) re-laid out so neuron j's column is
    contiguous: the same codes, scales and zero points, moved."""
    zp = (None if m.zero_points is None
          else np.ascontiguousarray(np.asarray(m.zero_points, np.uint8).T))
    return Q8Columns(codes=np.ascontiguousarray(np.asarray(m.codes, np.uint8)
                                                .reshape(m.n, m.k).T),
                     scales=np.ascontiguousarray(np.asarray(m.scales, np.float32).T),
                     zero_points=zp, block=m.block)


def dequantize_columns(c: Q8Columns) -> np.ndarray:
    """``W [d_ff, d_out]`` float32 of a re-laid-out down projection, computed as
    ``dequantize`` computes it."""
    z = (np.full(c.scales.shape, SYMMETRIC_ZERO_POINT, np.int32) if c.zero_points is None
         else c.zero_points.astype(np.int32))
    z = np.repeat(z, c.block, axis=0)
    s = np.repeat(np.asarray(c.scales, np.float32), c.block, axis=0)
    return (c.codes.astype(np.int32) - z).astype(np.float32) * s


def rows_matrix(codes_: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> Q8Matrix:
    """A row-per-neuron projection from SparseFFN's int8 inputs as stored (W1 or WU with
    their scales and zero points, in any shapes of those sizes)."""
    n, kb, block = codes_.shape
    return Q8Matrix(codes_, np.asarray(scales, np.float32).reshape(n, kb),
                    None if zeros is None else np.asarray(zeros).reshape(n, kb), kb * block,
                    block)


def float_weights(w) -> dict[str, np.ndarray]:
    """SparseFFN's int8 weights (W1, W1S, [W1Z], W2, W2S, [W2Z], [WU, WUS, [WUZ]]) as the
    float32 weights of the same op in mode exact without ``bits``: W1 [d_in, d_ff], W2
    [d_ff, d_out], WU [d_ff, d_in] (a row per neuron)."""
    w1 = rows_matrix(w["W1"], w["W1S"], w.get("W1Z"))
    z2 = w.get("W2Z")
    out = {"W1": dequantize(w1),
           "W2": dequantize_columns(Q8Columns(np.asarray(w["W2"], np.uint8),
                                              np.asarray(w["W2S"], np.float32),
                                              None if z2 is None else np.asarray(z2),
                                              w1.block))}
    if w.get("WU") is not None:
        out["WU"] = np.ascontiguousarray(dequantize(rows_matrix(w["WU"], w["WUS"],
                                                                w.get("WUZ"))).T)
    return out


def from_per_channel(codes_: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                     axis: int | None, block: int = 32) -> Q8Matrix | str:
    """A QDQ weight ``W [K, N]`` quantized per tensor (``axis`` None) or per output channel
    (``axis`` 1: one scale, zero point per column n), int8 or uint8 codes, in the layout
    above with ``block``: the same codes (int8 ones moved to uint8 by + 128, their zero
    points too, so every difference code − zero point is unchanged) and each channel's scale
    repeated for each of its blocks — every dequantized weight is the same float32 product
    DequantizeLinear computes, no requantization. Why not where the layout cannot hold it
    (scales along K: ``axis`` 0; K not a multiple of ``block``)."""
    codes_ = np.asarray(codes_)
    if codes_.ndim != 2 or codes_.dtype.name not in ("int8", "uint8"):
        return f"codes {codes_.dtype.name} {list(codes_.shape)}: expected 2-D int8 or uint8"
    k, n = codes_.shape
    if axis == 0 and np.asarray(scale).size > 1:
        return ("scales per input row (axis 0): a block of the layout shares one scale along "
                "K")
    if k % block:
        return f"K {k} is not a multiple of the block {block}"
    shift = 128 if codes_.dtype == np.int8 else 0
    blocks = k // block

    def per_block(a: np.ndarray, dtype) -> np.ndarray:
        a = np.broadcast_to(np.asarray(a).reshape(-1), (n,)) if np.asarray(a).size in (1, n) \
            else None
        return np.ascontiguousarray(np.repeat(a.astype(dtype)[:, None], blocks, axis=1))

    if np.asarray(scale).size not in (1, n):
        return f"scales {list(np.asarray(scale).shape)}: expected one or {n}"
    u = (codes_.astype(np.int16) + shift).astype(np.uint8)
    zp = (np.zeros((), np.int16) if zero_point is None
          else np.asarray(zero_point).astype(np.int16)) + shift
    zeros = None if np.all(zp == SYMMETRIC_ZERO_POINT) else per_block(zp, np.uint8)
    return Q8Matrix(np.ascontiguousarray(u.T.reshape(n, blocks, block)),
                    per_block(np.asarray(scale, np.float32), np.float32), zeros, k, block)
