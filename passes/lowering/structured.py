"""Structured FFN sites: ``ai.fffc::StructuredFFN`` (with pre-merged dense weights for calls
of up to ``merged_max_tokens`` tokens; with ``max_tokens``, behind an ``If`` on the token
count with the projections in standard ops beyond), or the structured projections in
standard ops."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.contract.modes import Behaviour, register
from fffc.contract.ops import STRUCTURED_FFN
from fffc.contract.structure import merged_weight

from .. import standard_forms
from .._common import const_array, initializer
from ..markers import StructuredMarker
from ._emit import Lowering, fallback, fffc_node, provenance, replace, taped, token_dispatch

INPUT_NAMES = [a.name for a in STRUCTURED_FFN.inputs]


def _structured_ffn(tape: ir.tape.Tape, v: dict, act: str, opset: int) -> ir.Value:
    return standard_forms.structured_ffn(tape, v["X"], v["A1"], v["U1"], v["B1"], v["A2"],
                                         v["U2"], v["B2"], activation_name=act, opset=opset,
                                         s1=v["S1"], s2=v["S2"])


def structured_function(overload: str, present: dict[str, bool], act: str,
                        opset: int) -> ir.Function:
    """StructuredFFN's fallback: the structured path in standard ops (M1/M2 unused: the
    merged weights compute the same function)."""
    formals = [ir.Value(name=n) for n in INPUT_NAMES]
    tape = ir.tape.Tape()
    y = _structured_ffn(tape, {f.name: f if present[f.name] else None for f in formals}, act,
                        opset)
    return fallback(STRUCTURED_FFN, overload, formals, tape, y, opset)


def keep(ctx: Lowering, m: StructuredMarker, plan: SiteLowering) -> None:
    """A site left as it was: its projections in standard ops."""
    tape = ir.tape.Tape()
    out = _structured_ffn(tape, dict(m.inputs), m.activation, ctx.opset)
    for i, n in enumerate(tape.nodes):
        n.name = f"{m.name}/structured/{i}_{n.op_type}"
    replace(m.node, tape, out)


@register(Decision.STRUCTURED, Behaviour.LOWER)
def lower_structured(ctx: Lowering, m: StructuredMarker, plan: SiteLowering) -> None:
    """ai.fffc::StructuredFFN with its standard-op body as the fallback function."""
    inputs = dict(m.inputs)
    if plan.merged_max_tokens > 0:
        for i in (1, 2):
            factors = (inputs[f"A{i}"], inputs[f"U{i}"], inputs[f"S{i}"])
            merged = merged_weight(*(const_array(v) if v is not None else None
                                               for v in factors))
            inputs[f"M{i}"] = initializer(ctx.graph, f"{m.name}__merged_{i}",
                                          merged.astype(np.float32))
    present = {n: inputs[n] is not None for n in INPUT_NAMES}
    overload = f"{m.activation}_" + "".join(n.lower() for n in INPUT_NAMES
                                            if present[n] and n != "X")
    tape = ir.tape.Tape()
    kernel = ir.tape.Tape() if plan.max_tokens > 0 else tape
    out = fffc_node(ctx, kernel, m, STRUCTURED_FFN, inputs,
                    {"activation": m.activation, "merged_max_tokens": plan.merged_max_tokens},
                    overload,
                    lambda: structured_function(overload, present, m.activation, ctx.opset),
                    provenance(m))
    if plan.max_tokens > 0:
        beyond = ir.tape.Tape()
        original = _structured_ffn(beyond, dict(m.inputs), m.activation, ctx.opset)
        k, p, _ = const_array(m.inputs["A1"]).shape
        out = token_dispatch(tape, m, k * p, plan.max_tokens, (list(kernel.nodes), out),
                             taped(beyond, original, f"{m.name}/{plan.beyond}"))
    replace(m.node, tape, out)
