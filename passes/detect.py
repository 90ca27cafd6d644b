"""Run the rule families in order and report what they found.

``canonicalize`` folds constants and rewrites exporter variants into one form;
``detect`` replaces every FFN with a marker and returns its Site; ``near_misses``
explains FFN-shaped regions no rule took.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter import pattern

from fffc.contract.sites import NearMiss, Site

from . import (
    canonical_gelu,
    canonical_linear,
    canonical_silu,
    canonical_structured,
    ffn_dense,
    ffn_fff,
    ffn_fff_walk,
    ffn_gated,
    ffn_structured,
    mod_routed,
)
from ._common import CANON, const_array
from .lower import capacity_of, markers

CANONICAL_FAMILIES = {
    "conv1d": canonical_linear.conv1d_rules,
    "linear": canonical_linear.rules,
    "gelu": canonical_gelu.rules,
    "silu": canonical_silu.rules,
    "structured": canonical_structured.rules,
}
STRUCTURED_PASSES = [ffn_structured.rules_with_b2, ffn_structured.rules]
FFN_PASSES = [ffn_gated.rules_with_b2, ffn_gated.rules, ffn_dense.rules_with_b2, ffn_dense.rules]
ACTIVATION_OPS = {"Relu", "Gelu", "Silu", "Sigmoid", "Tanh", "Erf", "Mul", "QuickGelu",
                  "FastGelu", "BiasGelu", "LeakyRelu", "Elu", "Selu", "HardSigmoid",
                  "HardSwish", "Softplus", "Mish", "Swish"}


def _cleanup(model: ir.Model) -> None:
    common_passes.RemoveUnusedNodesPass()(model)


def canonicalize(model: ir.Model) -> dict[str, int]:
    """Fold constants, drop dead nodes, rewrite GELU/SiLU/linear variants; counts per family."""
    common_passes.IdentityEliminationPass()(model)
    common_passes.ShapeInferencePass()(model)  # TorchScript exports carry few shapes
    _constant_folding.FoldConstantsPass(shape_inference=False, input_size_limit=8192,
                                        output_size_limit=8192)(model)
    _cleanup(model)
    counts = dict.fromkeys(CANONICAL_FAMILIES, 0)
    for _ in range(4):  # to a fixpoint: one rewrite can expose another
        changed = 0
        for family, rules in CANONICAL_FAMILIES.items():
            n = rules.apply_to_model(model)
            counts[family] += n
            changed += n
            _cleanup(model)
        if not changed:
            break
    return counts


def detect(model: ir.Model) -> list[Site]:
    """Replace each FFN with a canonical marker (longest patterns first); return the sites."""
    ffn_fff.detect(model)  # before the FFN rules: its region holds a Gelu and projections
    ffn_fff_walk.detect(model)
    _cleanup(model)
    # the structured FFN rules (hundreds of projection-form combinations) only where
    # canonicalization left a structured projection to match
    structured = any(n.domain == CANON and n.op_type in ("StructuredLinear", "BlockShuffle")
                     for n in model.graph)
    for rules in (STRUCTURED_PASSES if structured else []) + FFN_PASSES:
        rules.apply_to_model(model)
        _cleanup(model)
    mod_routed.detect(model)  # after the FFN rules: a routed region holds an FFN marker
    _cleanup(model)
    sites = []
    for i, node in enumerate(markers(model.graph)):
        node.name = f"fffc_ffn_{i}"
        sites.append(_site(node))
    return sites


def _site(node: ir.Node) -> Site:
    get = node.attributes.get_string
    if get("kind", "") == "structured":
        return _structured_site(node)
    if get("kind", "") == "routed":
        return _routed_site(node)
    _x, w1, b1, w2, b2 = (*node.inputs, None, None)[:5]
    w1a, w2a = const_array(w1), const_array(w2)
    return Site(
        name=node.name, rule=get("rule", ""), kind=get("kind", ""),
        activation=get("activation", ""), up_activation=get("up_activation", "none"),
        d_model=int(w1a.shape[0]), d_ff=int(w1a.shape[1]), d_out=int(w2a.shape[1]),
        has_b1=b1 is not None, has_b2=b2 is not None, dtype=str(w1a.dtype),
        matched_nodes=[n for n in get("matched_nodes", "").split(",") if n],
        trees=node.attributes.get_int("trees", 0), depth=node.attributes.get_int("depth", 0),
        tie_break=get("tie_break", ""),
    )


def _structured_site(node: ir.Node) -> Site:
    """A structured marker (X, A1, U1, B1, A2, U2, B2): widths and each projection's form."""
    get = node.attributes.get_string
    _x, a1, u1, b1, a2, u2, b2, _m1, _m2, s1, s2 = (*node.inputs, *[None] * 11)[:11]
    arrays = [const_array(v) if v is not None else None for v in (a1, u1, a2, u2, s1, s2)]
    a1a, u1a, a2a, u2a, s1a, s2a = arrays
    (k1, p1, q1), (k2, _, q2) = a1a.shape, a2a.shape

    def width(k: int, q: int, u, sh) -> int:
        return u.shape[1] if u is not None else (sh.shape[0] * sh.shape[2] if sh is not None
                                                 else k * q)

    d_ff, d_out = width(k1, q1, u1a, s1a), width(k2, q2, u2a, s2a)
    params = sum(a.size for a in arrays if a is not None)
    structure = {
        "first": ffn_structured.describe(a1, u1, s1),
        "second": ffn_structured.describe(a2, u2, s2),
        "k1": k1, "r1": k1 * q1, "u1": u1 is not None, "k2": k2, "r2": k2 * q2,
        "u2": u2 is not None, "params": int(params),
        "params_fraction": round(params / (k1 * p1 * d_ff + d_ff * d_out), 4),
    }
    for i, sh in ((1, s1a), (2, s2a)):
        if sh is not None:
            structure[f"m{i}"], structure[f"s{i}"] = int(sh.shape[0]), int(sh.shape[2])
    return Site(
        name=node.name, rule=get("rule", ""), kind="structured", activation=get("activation", ""),
        up_activation="none", d_model=int(k1 * p1), d_ff=int(d_ff), d_out=int(d_out),
        has_b1=b1 is not None, has_b2=b2 is not None, dtype=str(arrays[0].dtype),
        matched_nodes=[n for n in get("matched_nodes", "").split(",") if n], structure=structure,
    )


def _routed_site(node: ir.Node) -> Site:
    """A routed marker (X, WR, BR, W1, B1, W2, B2): the FFN's widths and how it is routed."""
    get = node.attributes.get_string
    _x, _wr, br, w1, b1, w2, b2, wa, ba, ls = (*node.inputs, *[None] * 10)[:10]
    w1a, w2a = const_array(w1), const_array(w2)
    routing = {
        "selection": get("selection", "topk"), "k": node.attributes.get_int("k", 1),
        "capacity": capacity_of(node),
        "router": get("router", "raw"), "router_bias": br is not None,
        "selection_score": wa is not None, "selection_bias": ba is not None,
        "layer_norm_epsilon": (node.attributes.get_float("epsilon", 1e-5) if ls is not None
                               else None),
        "x_coef": [float(v) for v in node.attributes["x_coef"].value],
        "delta_coef": [float(v) for v in node.attributes["delta_coef"].value],
    }
    return Site(
        name=node.name, rule=get("rule", ""), kind="routed", activation=get("activation", ""),
        up_activation="none", d_model=int(w1a.shape[0]), d_ff=int(w1a.shape[1]),
        d_out=int(w2a.shape[1]), has_b1=b1 is not None, has_b2=b2 is not None,
        dtype=str(w1a.dtype), matched_nodes=[n for n in get("matched_nodes", "").split(",") if n],
        routing=routing,
    )


def _projection(node: ir.Node) -> bool:
    return (node.op_type in ("MatMul", "Gemm") and node.domain == ""
            and len(node.inputs) > 1 and const_array(node.inputs[1]) is not None)


def _upstream_projection(value: ir.Value, depth: int = 8) -> ir.Node | None:
    """The nearest projection above ``value`` through activation-like nodes."""
    frontier = [value]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            p = v.producer() if v is not None else None
            if p is None:
                continue
            if _projection(p):
                return p
            if p.op_type in ACTIVATION_OPS or p.op_type in ("Add", "Div", "Pow", "Reshape", "Cast"):
                nxt.extend(p.inputs)
        frontier = nxt
    return None


def near_misses(model: ir.Model) -> list[NearMiss]:
    """FFN-shaped regions (projection → activation → projection) not replaced by a marker.

    The reason is the best partial match of the FFN rules at the region's last node, as
    reported by onnxscript's MatchingTracer.
    """
    out = [_fff_near_miss(ffn_fff_walk.match, node, "FastFeedForward walk")
           for node in ffn_fff_walk.candidates(model.graph)]
    out += [_mod_near_miss(node) for node in mod_routed.candidates(model.graph)
            if mod_routed.looks_routed(node)]
    out += [_structured_near_miss(node) for node in model.graph
            if node.op_type in ("StructuredLinear", "BlockShuffle") and node.domain == CANON]
    out += [NearMiss(nodes=[node.name or "MatMul"], reason=(
        f"batched product with a constant {list(const_array(node.inputs[1]).shape)} "
        "(a block-diagonal factor?) outside any structured projection fffc recognizes: "
        "expected Reshape([-1,k,p]) → Transpose(1,0,2) → MatMul → Transpose(1,0,2) → "
        "Reshape([-1,k·q]) (BlockDense) or a BlockShuffle's grid reshape and second MatMul"))
        for node in model.graph if node.op_type == "MatMul" and node.domain == ""
        and const_array(node.inputs[1]) is not None and const_array(node.inputs[1]).ndim == 3]
    for node in model.graph:
        if node.op_type == "MatMul" and node.domain == "" and ffn_fff.looks_like_fff(node):
            out.append(_fff_near_miss(ffn_fff.match, node, "FastFeedForward"))
            continue
        if not _projection(node) or node.domain == CANON:
            continue
        act = node.inputs[0].producer() if node.inputs[0] is not None else None
        if act is None or act.op_type not in ACTIVATION_OPS:
            continue
        first = _upstream_projection(act.inputs[0]) if act.inputs else None
        if first is None:
            continue
        reason = _best_failure(model, node)
        out.append(NearMiss(nodes=[first.name or "?", act.name or act.op_type, node.name or "?"],
                            reason=reason))
    return out


def _mod_near_miss(node: ir.Node) -> NearMiss:
    """A ScatterElements fed through a TopK selection that ``mod_routed`` did not take."""
    try:
        mod_routed.match_any(node)
        reason = "Mixture-of-Depths: the region's nodes are also used outside it"
    except ffn_fff.Fail as e:
        reason = f"Mixture-of-Depths: {e}"
    return NearMiss(nodes=[node.name or node.op_type], reason=reason)


def _structured_near_miss(node: ir.Node) -> NearMiss:
    """A structured projection no FFN rule took (it stays as the export had it)."""
    a = const_array(node.inputs[1])
    shuffle = node.op_type == "BlockShuffle"
    u = node.inputs[2] if len(node.inputs) > 2 and not shuffle else None
    form = ffn_structured.describe(node.inputs[1], u, node.inputs[2] if shuffle else None)
    return NearMiss(nodes=[node.name or node.op_type], reason=(
        f"{form} projection (blocks {a.shape[0]}, {a.shape[1]}→{a.shape[2]} each) is not "
        "half of a structured FFN fffc lowers: expected projection (+ bias) → ReLU/GELU/SiLU → "
        "projection (+ bias)"))


def _fff_near_miss(match, node: ir.Node, form: str) -> NearMiss:
    """An FFF-shaped region left in place: why ``match`` refused it (or that it matched
    but its nodes are used outside, which ``_region`` refuses)."""
    try:
        match(node)
        reason = f"{form}: the region's nodes are also used outside it"
    except ffn_fff.Fail as e:
        reason = f"{form}: {e}"
    return NearMiss(nodes=[node.name or node.op_type], reason=reason)


def _best_failure(model: ir.Model, root: ir.Node) -> str:
    tracer = pattern.MatchingTracer()
    candidates = [root, *[u for u, _ in root.outputs[0].uses()]]
    for rules in FFN_PASSES:
        for rule in rules.rules:
            for node in candidates:
                rule.try_rewrite(model, model.graph, node, tracer=tracer)
    best, best_score = "no FFN rule matches this activation/projection structure", -1
    for infos in tracer.best_matches_map.values():
        for info in infos:
            reason = info.match_result.reason
            if reason and info.score() > best_score:
                best, best_score = reason, info.score()
    return best
