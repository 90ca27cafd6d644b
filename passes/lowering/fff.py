"""FFF sites: ``ai.fffc::FastFeedForward`` (tree; with ``max_tokens``, behind an ``If`` on
the token count with the exported region beyond), the conditional walk in standard ops
(walk), or the exported region back (left as it was)."""

from __future__ import annotations

import onnx_ir as ir

from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.contract.modes import Behaviour, mode, register
from fffc.contract.ops import FAST_FEED_FORWARD

from .. import standard_forms
from .._common import const_array
from ..markers import FFFMarker
from ._emit import (
    Lowering,
    fallback,
    fffc_node,
    laid_out,
    provenance,
    put_back,
    region,
    replace,
    token_dispatch,
)


def fff_function(overload: str, trees: int, depth: int, tie_break: str,
                 opset: int) -> ir.Function:
    """FastFeedForward's fallback in standard ops (X is [T, d_in]): the conditional walk, or
    the masked form for wide forests (``standard_forms.fff_fallback``)."""
    formals = [ir.Value(name=a.name) for a in FAST_FEED_FORWARD.inputs]
    tape = ir.tape.Tape()
    y = standard_forms.fff_fallback(tape, *formals, trees=trees, depth=depth, opset=opset,
                                    tie_break=tie_break)
    return fallback(FAST_FEED_FORWARD, overload, formals, tape, y, opset)


keep = put_back  # a site left as it was: the exported region back


@register(Decision.TREE, Behaviour.LOWER)
def lower_tree(ctx: Lowering, m: FFFMarker, plan: SiteLowering) -> None:
    """ai.fffc::FastFeedForward (W_in row per node) with the walk as fallback function."""
    inputs = laid_out(ctx.graph, m.inputs, mode(Decision.TREE))
    overload = f"k{m.trees}_d{m.depth}_{m.tie_break}"
    attrs = {"trees": m.trees, "depth": m.depth, "activation": "gelu",
             "tie_break": m.tie_break}
    tape = ir.tape.Tape()
    kernel = ir.tape.Tape() if plan.max_tokens > 0 else tape
    out = fffc_node(ctx, kernel, m, FAST_FEED_FORWARD, inputs, attrs, overload,
                    lambda: fff_function(overload, m.trees, m.depth, m.tie_break, ctx.opset),
                    provenance(m, matched=False))
    if plan.max_tokens > 0:
        d_in = const_array(m.inputs["W_in"]).shape[0]
        out = token_dispatch(tape, m, d_in, plan.max_tokens, (list(kernel.nodes), out),
                             region(m))
    replace(m.node, tape, out)


@register(Decision.WALK, Behaviour.LOWER)
def lower_walk(ctx: Lowering, m: FFFMarker, plan: SiteLowering) -> None:
    """The conditional walk in standard ops (W_in row per node), no kernel."""
    v = laid_out(ctx.graph, m.inputs, mode(Decision.WALK))
    tape = ir.tape.Tape()
    out = standard_forms.fff_walk(tape, v["X"], v["W_in"], v["B_in"], v["W_out"],
                                  trees=m.trees, depth=m.depth, opset=ctx.opset,
                                  tie_break=m.tie_break)
    for i, n in enumerate(tape.nodes):
        n.name = f"{m.name}/walk/{i}_{n.op_type}"
    replace(m.node, tape, out)
