"""What the lowering pass is told per site: its decision and the parameters it needs.

``fffc.passes.lower(model, plans)`` takes one ``SiteLowering`` per marker (a marker without
one stays as it was). ``Masks`` are the parameters of a masked FFN function — TEAL's input
and hidden thresholds, CATS's gate threshold, a trained predictor, centers — either
lowered into the ``SparseFFN`` op of a masked decision, or, with decision ``DENSE``, written
in standard ONNX ops: the reference the masked kernels must equal and what calibration
measures a sparsity's accuracy with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .kinds import Branch, Decision, SparseMode

# A threshold: a constant (negative = off), a scalar graph input (an ``onnx_ir.Value``,
# for searching levels), or None (off).
Threshold = Any


@dataclass(frozen=True)
class Masks:
    """Parameters of a masked FFN: entries of x with |x - c_in| <= ``input`` and of the down
    projection's input a with |a - c_hidden| <= ``hidden`` are dropped (replaced by their
    center), gates with |act(x·Wg)| <= ``gate`` are closed, and with a ``predictor`` only
    the neurons whose score ((x·A)·B + C) is > 0 count."""

    input: Threshold = None
    hidden: Threshold = None
    gate: Threshold = None
    predictor: tuple | None = None  # (A [d_in, r], B [r, d_ff], C [d_ff]), the cut in C
    predictor_switch: Any = None  # a scalar graph input added to the scores (0: on, 1e30: off)
    centers: tuple | None = None  # (c_in [d_in] | None, c_hidden [d_ff] | None)

    @property
    def thresholds(self) -> tuple[Threshold, Threshold]:
        """The SparseFFN ``TH`` pair: (t_in, t_hidden) or, with a gate threshold, (t_in,
        t_gate)."""
        return (self.input, self.gate if self.gate is not None else self.hidden)


@dataclass(frozen=True)
class SiteLowering:
    """One site's lowering: its decision and, per decision, what it needs."""

    decision: Decision = Decision.DENSE
    masks: Masks | None = None  # the masked decisions' parameters (or, with DENSE: the
    # masked function in standard ops)
    max_tokens: int = 0  # > 0: If(tokens <= max_tokens) runs the op, else ``beyond``
    beyond: Branch = Branch.ORIGINAL  # past max_tokens: the original subgraph, or a masked
    # decision's function (its masks) in standard ops
    merged_max_tokens: int = 0  # StructuredFFN: calls of up to this many tokens use the
    # pre-merged dense weights
    dequantized: SparseMode | None = None  # left as it was (DENSE), an int4 site in the
    # function this mode's kernels compute: the FFN on its dequantized weights in float32
    # (its MatMulNBits at accuracy_level 0, rounded to int8 per block where the mode's
    # kernels round: ``fffc.contract.int4.int8_rounding``), no float copy
