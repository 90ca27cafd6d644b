"""Mixture-of-Depths sites: ``ai.fffc::RoutedFFN`` (its routing fixed per overload; with
``max_tokens``, behind an ``If`` on the token count with the exported region beyond), or the
exported region back (its inner FFN marker is lowered next, where the region is)."""

from __future__ import annotations

import onnx_ir as ir

from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.contract.modes import Behaviour, register
from fffc.contract.ops import ROUTED_FFN

from .. import standard_forms
from .._common import const_array
from ..markers import RoutedMarker, Routing
from ._emit import (
    Lowering,
    fallback,
    fffc_node,
    provenance,
    put_back,
    region,
    replace,
    token_dispatch,
)

INPUT_NAMES = [a.name for a in ROUTED_FFN.inputs]


def routed_function(overload: str, present: dict[str, bool], activation: str, r: Routing,
                    opset: int) -> ir.Function:
    """RoutedFFN's fallback: the routing in standard ops (k, router and combine fixed per
    overload)."""
    formals = [ir.Value(name=n) for n in INPUT_NAMES]
    f = {v.name: v if present[v.name] else None for v in formals}
    tape = ir.tape.Tape()
    y = standard_forms.routed_ffn(
        tape, f["X"], f["WR"], f["BR"], f["W1"], f["B1"], f["W2"], f["B2"], f["WA"], f["BA"],
        activation_name=activation, selection=r.selection, k=r.k, capacity=r.capacity,
        router=r.router, x_coef=r.x_coef, delta_coef=r.delta_coef, opset=opset,
        layer_norm=(f["LS"], f["LB"], r.epsilon) if f["LS"] is not None else None)
    return fallback(ROUTED_FFN, overload, formals, tape, y, opset)


def _overload(activation: str, r: Routing, present: dict[str, bool]) -> str:
    coefs = "_".join(f"{c:g}" for c in (*r.x_coef, *r.delta_coef))
    cap = r.capacity
    sel = "threshold" if r.selection != "topk" else f"k{r.k}" if cap is None else (
        f"kdiv{cap['divisor']}" if cap["divisor"] else f"k{cap['round']}{cap['scale']:g}") + (
        f"min{cap['min']}" if cap and cap["min"] else "")
    sel += f"_ln{r.epsilon:g}" if present["LS"] else ""
    return (f"{activation}_{sel}_{r.router}_{coefs}_" +
            "".join(n.lower() for n in INPUT_NAMES if present[n] and n != "X")
            ).replace(".", "p").replace("-", "m")


keep = put_back  # a site left as it was: the exported region back


@register(Decision.ROUTED, Behaviour.LOWER)
def lower_routed(ctx: Lowering, m: RoutedMarker, plan: SiteLowering) -> None:
    """ai.fffc::RoutedFFN with its standard-op body as the fallback function."""
    r = m.routing
    present = {n: m.inputs[n] is not None for n in INPUT_NAMES}
    overload = _overload(m.activation, r, present)
    cap = r.capacity
    attrs = {"activation": m.activation, "selection": r.selection, "k": r.k,
             **({} if cap is None else {"k_scale": cap["scale"], "k_divisor": cap["divisor"],
                                        "k_round": cap["round"], "k_min": cap["min"]}),
             "router": r.router, "x_coef": list(r.x_coef), "delta_coef": list(r.delta_coef),
             "epsilon": r.epsilon}
    tape = ir.tape.Tape()
    kernel = ir.tape.Tape() if plan.max_tokens > 0 else tape
    out = fffc_node(ctx, kernel, m, ROUTED_FFN, m.inputs, attrs, overload,
                    lambda: routed_function(overload, present, m.activation, r, ctx.opset),
                    provenance(m))
    if plan.max_tokens > 0:
        d_in = const_array(m.inputs["W1"]).shape[0]
        out = token_dispatch(tape, m, d_in, plan.max_tokens, (list(kernel.nodes), out),
                             region(m))
    replace(m.node, tape, out)
