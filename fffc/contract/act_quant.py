"""Static activation quantization inside an FFN (``quantize_static`` in QDQ format).

ONNX Runtime's static quantizer puts a ``QuantizeLinear → DequantizeLinear`` pair with a
calibrated scale ``s`` and zero point ``z`` on activations: in float terms the identity
becomes the fake quantization

    fq(v) = (clamp(round(v / s) + z, qmin, qmax) − z) · s

(``round``: half to even, as ``QuantizeLinear``; ``[qmin, qmax]`` the code type's range:
int8 [−128, 127], uint8 [0, 255]). A SparseFFN site of such a model computes its FFN with
the pairs found inside it applied at fixed places (``At``):

    dense:  Y = fq_H(act(fq_P(X·W1) + B1))·W2 + B2
    gated:  Y = fq_H(fq_G(act(fq_P(X·W1) + B1)) ⊙ fq_U(up_act(X·WU)))·W2 + B2

the absent ones the identity. The pairs on X before the site and on Y after it stay in the
graph. A pair whose zero point is ``qmin`` also clamps at zero: fq(v) = fq(relu(v)) for
every v (v < 0 rounds to a code ≤ z, clamped to z, i.e. 0), which is how the quantizer
fuses a ReLU into it; canonicalization makes that ReLU explicit.

Invariant (sparsity survives): with qmin ≤ z ≤ qmax, fq(0) = (z − z)·s = 0 exactly, so a
neuron whose activation is zero stays zero, and fq of a non-negative value is
non-negative; a ReLU-family neuron is skipped exactly when its fake-quantized activation
is zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

# the code types a pair quantizes to: name → (qmin, qmax)
CODE_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


class At(IntEnum):
    """Where a fake quantization sits in the FFN (its row of SparseFFN's ``AQ``)."""

    PRE = 0  # on X·W1, before B1 and the activation
    GATE = 1  # gated: on act(X·W1 + B1)
    UP = 2  # gated: on up_act(X·WU)
    HIDDEN = 3  # on the down projection's input


@dataclass(frozen=True)
class FakeQuant:
    """One QuantizeLinear → DequantizeLinear pair with a per-tensor scale and zero point."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"fake quantization scale {self.scale}: expected > 0")
        if not self.qmin <= self.zero_point <= self.qmax:
            raise ValueError(f"zero point {self.zero_point} outside [{self.qmin}, {self.qmax}]")

    @property
    def code_type(self) -> str:
        return next(n for n, r in CODE_RANGES.items() if r == (self.qmin, self.qmax))

    @property
    def clamps_at_zero(self) -> bool:
        """fq(v) = fq(relu(v)): the zero point is the code type's minimum."""
        return self.zero_point == self.qmin

    def row(self) -> list[float]:
        return [self.scale, float(self.zero_point), float(self.qmin), float(self.qmax)]


def fake_quantize(v: np.ndarray, fq: FakeQuant) -> np.ndarray:
    """``fq`` applied to float32 ``v`` as QuantizeLinear then DequantizeLinear compute it
    (v / s in float32, round half to even, saturate; (q − z) · s in float32)."""
    s = np.float32(fq.scale)
    q = np.clip(np.rint(np.asarray(v, np.float32) / s) + np.float32(fq.zero_point),
                fq.qmin, fq.qmax)
    return ((q - np.float32(fq.zero_point)).astype(np.float32) * s).astype(np.float32)


AQ_ROWS = len(At)
AQ_COLS = 4  # scale, zero point, qmin, qmax; a row of zeros: no fake quantization there


def pack(pairs: Mapping[At, FakeQuant]) -> np.ndarray:
    """SparseFFN's ``AQ`` input: float32 [4, 4], row ``At``, (s, z, qmin, qmax) or zeros."""
    aq = np.zeros((AQ_ROWS, AQ_COLS), np.float32)
    for at, fq in pairs.items():
        aq[int(at)] = fq.row()
    return aq


def unpack(aq: np.ndarray | None) -> dict[At, FakeQuant]:
    """The pairs of an ``AQ`` array (None: none)."""
    if aq is None:
        return {}
    a = np.asarray(aq, np.float32).reshape(AQ_ROWS, AQ_COLS)
    return {At(i): FakeQuant(float(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for i, r in enumerate(a) if r[0] != 0}


def describe(pairs: Mapping[At, FakeQuant]) -> str:
    """One phrase: which activations are fake-quantized, to what."""
    where = ", ".join(a.name.lower() for a in sorted(pairs))
    types = "/".join(sorted({fq.code_type for fq in pairs.values()}))
    return f"static {types} activations (QDQ on {where})"
