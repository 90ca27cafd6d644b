"""Quantized weights: one typed record per quantized projection, and its dequantization.

A projection ``x·W`` whose ``W [K, N]`` (MatMul orientation: K inputs, N outputs) is stored
as integer codes with scales (and zero points) comes in one of the ``QuantSource`` forms the
ONNX tools write: ``com.microsoft::MatMulNBits`` (ONNX Runtime's MatMulNBitsQuantizer and the
GenAI model builder's int4/int8), ``DequantizeLinear`` of a constant before a ``MatMul``
(QDQ: per tensor, per channel, blocked), or ONNX Runtime's dynamic int8
(``DynamicQuantizeLinear`` + ``MatMulInteger`` + a scale ``Mul``). ``QuantizedWeight`` says
which, with what the kernels will need (bits, granularity, block, axis, zero points,
``accuracy_level``). ``dequantize`` gives the float32 ``W [K, N]`` the codes stand for:
``(code - zero_point) · scale``, which is what every later stage (detection, verification,
the NumPy reference) reasons about; the codes themselves are never rewritten.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .kinds import Granularity, QuantSource


@dataclass(frozen=True)
class QuantizedWeight:
    """How one projection's weight is stored.

    ``axis`` is the axis of ``W [K, N]`` the scales run along (a channel's or block's
    index): 0 for MatMulNBits (blocks along K, one row of blocks per output), 1 for
    per-output-channel scales; ``None`` for one scale per tensor. ``symmetric``: no zero
    points, or every zero point at the code's midpoint (0 for signed codes)."""

    source: QuantSource
    bits: int
    k: int
    n: int
    granularity: Granularity
    block_size: int = 0  # Granularity.BLOCK only
    axis: int | None = None
    symmetric: bool = True
    signed: bool = False  # int codes (else uint)
    accuracy_level: int | None = None  # MatMulNBits only: ONNX Runtime's compute type

    def describe(self) -> str:
        """One phrase: ``int4 MatMulNBits weights (block 32, symmetric, accuracy_level 4)``."""
        how = {Granularity.TENSOR: "per tensor", Granularity.CHANNEL: "per channel",
               Granularity.BLOCK: f"block {self.block_size}"}[self.granularity]
        parts = [how, "symmetric" if self.symmetric else "zero points"]
        if self.accuracy_level is not None:
            parts.append(f"accuracy_level {self.accuracy_level}")
        return f"int{self.bits} {self.source} weights ({', '.join(parts)})"

    def to_json(self) -> dict:
        d = asdict(self)
        d["source"], d["granularity"] = str(self.source), str(self.granularity)
        d["describe"] = self.describe()
        return d

    def to_attributes(self) -> dict[str, int | str]:
        """The record as ONNX attributes (ints and strings; absent values as -1)."""
        return {"source": str(self.source), "bits": self.bits, "k": self.k, "n": self.n,
                "granularity": str(self.granularity), "block_size": self.block_size,
                "axis": -1 if self.axis is None else self.axis,
                "symmetric": int(self.symmetric), "signed": int(self.signed),
                "accuracy_level": -1 if self.accuracy_level is None else self.accuracy_level}

    @classmethod
    def from_attributes(cls, get: Any) -> QuantizedWeight:
        """The record from ``get(name)`` (an attribute's value, as ``to_attributes`` wrote)."""
        axis, level = int(get("axis")), int(get("accuracy_level"))
        return cls(source=QuantSource(get("source")), bits=int(get("bits")), k=int(get("k")),
                   n=int(get("n")), granularity=Granularity(get("granularity")),
                   block_size=int(get("block_size")), axis=None if axis < 0 else axis,
                   symmetric=bool(get("symmetric")), signed=bool(get("signed")),
                   accuracy_level=None if level < 0 else level)


def _ints(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.int32)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 4-bit codes of each row of ``packed`` (uint8, two codes a byte,
    the low nibble first), as int32."""
    rows = np.asarray(packed, dtype=np.uint8).reshape(packed.shape[0], -1)
    codes = np.stack([rows & 0x0F, rows >> 4], axis=-1).reshape(rows.shape[0], -1)
    return _ints(codes[:, :count])


def nbits_codes(q: QuantizedWeight, b: np.ndarray) -> np.ndarray:
    """MatMulNBits' B ``[N, K/block, block·bits/8]`` as codes ``[N, K]`` (int32)."""
    if q.bits == 4:
        return unpack_nibbles(b.reshape(q.n, -1), q.k)
    return _ints(np.asarray(b, dtype=np.uint8).reshape(q.n, -1)[:, :q.k])


def nbits_zero_points(q: QuantizedWeight, zp: np.ndarray | None) -> np.ndarray:
    """MatMulNBits' zero points ``[N, blocks]`` (int32): packed like B (4 bits: two a
    byte), or the code's midpoint where the node has none."""
    blocks = -(-q.k // q.block_size)
    if zp is None:
        return np.full((q.n, blocks), 1 << (q.bits - 1), dtype=np.int32)
    if q.bits == 4:
        return unpack_nibbles(zp.reshape(q.n, -1), blocks)
    return _ints(np.asarray(zp, dtype=np.uint8).reshape(q.n, -1)[:, :blocks])


def _along(q: QuantizedWeight, a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scales or zero points of a ``[K, N]`` weight broadcast to ``shape`` by granularity."""
    a = np.asarray(a)
    if q.granularity is Granularity.TENSOR:
        return a.reshape(())
    if q.granularity is Granularity.CHANNEL:
        return a.reshape(-1, 1) if q.axis == 0 else a.reshape(1, -1)
    full = np.repeat(a, q.block_size, axis=q.axis)
    return full[: shape[0]] if q.axis == 0 else full[:, : shape[1]]


def dequantize(q: QuantizedWeight, arrays: list[np.ndarray | None]) -> np.ndarray:
    """The float32 ``W [K, N]`` of a projection stored as ``q`` says, from its constants in
    the source node's input order: MatMulNBits' (B, scales, zero points); DequantizeLinear's
    and dynamic int8's (codes, scale, zero point). ``(code - zero point) · scale``, computed
    as ONNX Runtime does: the integer difference, converted, times the float32 scale."""
    if q.source is QuantSource.MATMUL_NBITS:
        b, scales, zp = [*arrays, None, None][:3]
        codes = nbits_codes(q, b)
        blocks = -(-q.k // q.block_size)
        zeros = np.repeat(nbits_zero_points(q, zp), q.block_size, axis=1)[:, :q.k]
        s = np.repeat(np.asarray(scales, np.float32).reshape(q.n, blocks), q.block_size,
                      axis=1)[:, :q.k]
        return np.ascontiguousarray(((codes - zeros).astype(np.float32) * s).T)
    codes, scale, zp = [*arrays, None, None][:3]
    codes = _ints(codes)
    zeros = 0 if zp is None else _along(q, _ints(zp), codes.shape)
    s = _along(q, np.asarray(scale, np.float32), codes.shape)
    return np.ascontiguousarray((codes - zeros).astype(np.float32) * s)

