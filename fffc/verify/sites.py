"""Check 2: a planned op's NumPy reference, on the inputs its node is given, equals what the
original subgraph computed on the site's captured activations.

Each decision that rewrites a site registers its reference here (``Behaviour.REFERENCE``):
``fn(site, x, inputs) -> (y, slack)``, ``inputs`` being the op's inputs by name in the op's
layout (``fffc.passes.site_inputs``) and ``slack`` the error any float32 implementation of
a masked mode may show from entries within rounding of their threshold (kept by one side,
dropped by the other; None where the op is exact).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..contract import act_quant
from ..contract.int4 import Int4Weights, float_matrices, float_weights, quantize_x
from ..contract.kinds import Decision
from ..contract.modes import Behaviour, Layout, mode, register
from ..contract.sites import Site
from . import reference
from .compare import Comparison, compare, worse

Inputs = Mapping[str, np.ndarray]


def site_reference(site: Site, x: np.ndarray, inputs: Inputs) -> tuple[np.ndarray, np.ndarray | None]:
    """(reference output, slack) of a site's planned op on ``x``."""
    return mode(site.decision).behaviour(Behaviour.REFERENCE)(site, x, inputs)


def site_slack(site: Site, x: np.ndarray, inputs: Inputs) -> np.ndarray | None:
    """The slack alone (for comparing a kernel's output)."""
    return site_reference(site, x, inputs)[1]


def verify_site(site: Site, xs: list[np.ndarray], ys: list[np.ndarray], inputs: Inputs,
                rtol: float) -> Comparison:
    """Reference op vs the original subgraph's outputs, worst over the probes."""
    worst = Comparison(0.0, 0.0, True)
    for x, y in zip(xs, ys, strict=True):
        want, slack = site_reference(site, x, inputs)
        worst = worse(worst, compare(want, y, rtol, slack))
    return worst


def _ffn(w: Inputs, decision: Decision = Decision.EXACT) -> tuple:
    """W1, B1, W2, B2, WU as float32 in ``decision``'s float layout (int4 / int8 weights, in
    its quantized layout, dequantized)."""
    if "W1S" in w:
        if decision is Decision.EXACT:
            w = {**w, **float_weights(w)}
        else:
            rows = {n for n, lay in mode(decision).layouts.items() if lay is Layout.ROWS}
            w = {**w, **{n: np.ascontiguousarray(m.T) if n in rows else m
                         for n, m in float_matrices(w, mode(decision).sparse_mode).items()}}
    return (w["W1"], w.get("B1"), w["W2"], w.get("B2"), w.get("WU"))


def _act(site: Site) -> dict[str, str]:
    return {"activation_name": site.activation, "up_activation": site.up_activation}


@register(Decision.EXACT, Behaviour.REFERENCE)
def _exact(site: Site, x: np.ndarray, w: Inputs):
    q = site.int4
    if isinstance(q, Int4Weights) and q.int8_x:  # accuracy_level 4: x rounded per block
        x = quantize_x(x, q.block)
    fq = act_quant.unpack(w.get("AQ"))
    y = reference.sparse_ffn(x, *_ffn(w), **_act(site), act_quant=fq)
    if not fq:
        return y, None
    w1, b1, w2, _, wu = _ffn(w)
    return y, reference.fake_quant_slack(x, w1, b1, w2, wu, **_act(site), act_quant=fq)


def _int8_block(site: Site) -> int | None:
    """The block x (and, teal, a') is rounded to int8 in at accuracy_level 4 (None: not)."""
    q = site.int4
    return q.block if isinstance(q, Int4Weights) and q.int8_x else None


@register(Decision.TEAL, Behaviour.REFERENCE)
def _teal(site: Site, x: np.ndarray, w: Inputs):
    return reference.teal_ffn(x, *_ffn(w, Decision.TEAL), thresholds=w["TH"], **_act(site), xc=w.get("XC"),
                              hc=w.get("HC"), int8_block=_int8_block(site), slack=True)


@register(Decision.CATS, Behaviour.REFERENCE)
def _cats(site: Site, x: np.ndarray, w: Inputs):
    return reference.cats_ffn(x, *_ffn(w, Decision.CATS), thresholds=w["TH"], **_act(site),
                              int8_block=_int8_block(site), slack=True)


@register(Decision.PREDICTOR, Behaviour.REFERENCE)
def _predictor(site: Site, x: np.ndarray, w: Inputs):
    return reference.predictor_ffn(x, *_ffn(w, Decision.PREDICTOR), w["PA"], w["PB"], w["PC"], **_act(site),
                                   int8_block=_int8_block(site), slack=True)


def _fff(site: Site, x: np.ndarray, w: Inputs):
    return reference.fast_feed_forward(x, w["W_in"], w["B_in"], w["W_out"], trees=site.trees,
                                       depth=site.depth, tie_break=site.tie_break or "gt"), None


register(Decision.TREE, Behaviour.REFERENCE)(_fff)
register(Decision.WALK, Behaviour.REFERENCE)(_fff)


@register(Decision.STRUCTURED, Behaviour.REFERENCE)
def _structured(site: Site, x: np.ndarray, w: Inputs):
    return reference.structured_ffn(x, *(w.get(k) for k in ("A1", "U1", "B1", "A2", "U2", "B2")),
                                    activation_name=site.activation, s1=w.get("S1"),
                                    s2=w.get("S2")), None


@register(Decision.ROUTED, Behaviour.REFERENCE)
def _routed(site: Site, x: np.ndarray, w: Inputs):
    r = site.routing
    return reference.routed_ffn(
        x, *(w.get(k) for k in ("WR", "BR", "W1", "B1", "W2", "B2")),
        activation_name=site.activation, selection=r.get("selection", "topk"), k=r["k"],
        router=r["router"], x_coef=r["x_coef"], delta_coef=r["delta_coef"],
        wa=w.get("WA"), ba=w.get("BA"), capacity=r.get("capacity"),
        ln=((w["LS"], w["LB"], r["layer_norm_epsilon"]) if w.get("LS") is not None
            else None)), None
