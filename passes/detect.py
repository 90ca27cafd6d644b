"""Run the rule families in order and report what they found.

``canonicalize`` folds constants and rewrites exporter variants into one form;
``detect`` replaces every FFN with a marker and returns its Site; ``near_misses``
explains FFN-shaped regions no rule took.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import _constant_folding

from fffc.contract.kinds import SiteKind
from fffc.contract.sites import NearMiss, Site

from . import (
    canonical_gelu,
    canonical_linear,
    canonical_quant,
    canonical_reshape,
    canonical_silu,
    canonical_structured,
    ffn_dense,
    ffn_fff,
    ffn_fff_walk,
    ffn_gated,
    ffn_structured,
    mod_routed,
)
from ._common import CANON, best_failure, const_array, const_shape
from ._ffn_common import SUBGRAPH
from .markers import decode, markers
from .shapes import forget_contradicting_identity_shapes, infer_shapes

CANONICAL_FAMILIES = {
    "conv1d": canonical_linear.conv1d_rules,
    "linear": canonical_linear.rules,
    "gelu": canonical_gelu.rules,
    "silu": canonical_silu.rules,
    "computed_shapes": canonical_reshape.computed_shape_rules,
    "structured": canonical_structured.rules,
    # last: the reshapes the families above left (they match the exporters' own placement)
    "reshape": canonical_reshape.rules,
}
CANONICAL_ROUNDS = 4  # rounds of CANONICAL_FAMILIES to a fixpoint: one rewrite can expose another
FFN_FAMILIES = [ffn_gated, ffn_dense]  # the pattern families of plain FFNs, longest first
SITE_OF = {  # how each kind's marker becomes a Site (owned by its family)
    SiteKind.DENSE: ffn_dense.site, SiteKind.GATED: ffn_gated.site, SiteKind.FFF: ffn_fff.site,
    SiteKind.STRUCTURED: ffn_structured.site, SiteKind.ROUTED: mod_routed.site,
}
ACTIVATION_OPS = {"Relu", "Gelu", "Silu", "Sigmoid", "Tanh", "Erf", "Mul", "QuickGelu",
                  "FastGelu", "BiasGelu", "LeakyRelu", "Elu", "Selu", "HardSigmoid",
                  "HardSwish", "Softplus", "Mish", "Swish"}


def _cleanup(model: ir.Model) -> None:
    common_passes.RemoveUnusedNodesPass()(model)


def canonicalize(model: ir.Model, notes: list[str] | None = None) -> dict[str, int]:
    """Fold constants, drop dead nodes, rewrite GELU/SiLU/linear variants; counts per family.
    ``notes``: where to append what the user should know about the model (one line each)."""
    forget_contradicting_identity_shapes(model)
    common_passes.IdentityEliminationPass()(model)
    note = infer_shapes(model)
    if note is not None and notes is not None:
        notes.append(note)
    # quantized projections before folding: folding would turn a small DequantizeLinear
    # weight into a float32 initializer, and the quantized codes must survive as they are
    quantized = canonical_quant.rules.apply_to_model(model)
    _cleanup(model)
    _constant_folding.FoldConstantsPass(shape_inference=False, input_size_limit=8192,
                                        output_size_limit=8192)(model)
    _cleanup(model)
    counts = {"quantized": quantized, **dict.fromkeys(CANONICAL_FAMILIES, 0)}
    last: dict[str, int] = {}  # the rewrites of the last round, per family that made any
    for _ in range(CANONICAL_ROUNDS):
        last = {}
        for family, rules in CANONICAL_FAMILIES.items():
            n = rules.apply_to_model(model)
            counts[family] += n
            if n:
                last[family] = n
            _cleanup(model)
        if not last:
            break
    else:
        if notes is not None:
            notes.append(_unconverged(CANONICAL_ROUNDS, last))
    return counts


def _unconverged(rounds: int, last: dict[str, int]) -> str:
    """The note for a canonicalization that was still rewriting in its last round."""
    still = ", ".join(f"{family} {n}" for family, n in last.items())
    rounds_text = f"{rounds} round" + ("s" if rounds != 1 else "")
    return (f"canonicalization stopped after {rounds_text} while still rewriting (last round: "
            f"{still}); an FFN in a form it had not finished may be missed or be a near miss")


def detect(model: ir.Model) -> list[Site]:
    """Replace each FFN with a canonical marker, the families in order; return the sites.

    FFF first (its region holds a Gelu and projections), the structured FFNs (only where
    canonicalization left a structured projection) before the plain ones, MoD last (a
    routed region holds an FFN marker).
    """
    ffn_fff.rules.apply_to_model(model)
    ffn_fff_walk.rules.apply_to_model(model)
    _cleanup(model)
    families = [ffn_structured] if ffn_structured.worth_trying(model.graph) else []
    for family in [*families, *FFN_FAMILIES, mod_routed]:
        family.rules.apply_to_model(model)
        _cleanup(model)
    sites = []
    for i, node in enumerate(markers(model.graph)):
        node.name = f"fffc_ffn_{i}"
        marker = decode(node)
        site = SITE_OF[marker.kind](marker)
        site.weight_formats = canonical_quant.formats(marker.inputs)
        sites.append(site)
    return sites


# quantizing nodes between a region's projections: the activations' (fake) quantization
QUANTIZING_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                  canonical_quant.FAKE_QUANT}


def _projection(node: ir.Node) -> bool:
    """A projection by a constant weight: float, canonical quantized (``MatMul`` of a
    ``Dequantized`` weight), or a quantized form canonicalization refused."""
    return (((node.op_type in ("MatMul", "Gemm") and node.domain == "")
             or canonical_quant.quantized_source(node))
            and len(node.inputs) > 1 and const_shape(node.inputs[1]) is not None)


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
            if p.op_type in ACTIVATION_OPS or p.op_type in QUANTIZING_OPS or p.op_type in (
                    "Add", "Div", "Pow", "Reshape", "Cast"):
                nxt.extend(p.inputs)
        frontier = nxt
    return None


def near_misses(model: ir.Model) -> list[NearMiss]:
    """FFN-shaped regions (projection → activation → projection) not replaced by a marker.

    The reason is the best partial match of the FFN rules at the region's last node, as
    reported by onnxscript's MatchingTracer.
    """
    out = [NearMiss(nodes=[node.name or node.op_type], reason=reason)
           for family in (ffn_fff_walk, mod_routed)
           for node, reason in family.rules.near_misses(model.graph)]
    out += [_structured_near_miss(node) for node in model.graph
            if node.op_type in ("StructuredLinear", "BlockShuffle") and node.domain == CANON]
    out += [NearMiss(nodes=[node.name or node.op_type], reason=(
        f"batched product ({node.op_type}) with a constant "
        f"{list(const_array(node.inputs[1]).shape)} (a block-diagonal factor?) outside any "
        "structured projection fffc recognizes: expected Reshape([-1,k,p]) → Transpose(1,0,2) "
        "→ MatMul → Transpose(1,0,2) → Reshape([-1,k·q]), or Reshape(x, [..., k, p]) → "
        "Einsum(\"...kp,kqp->...kq\") → Reshape (BlockDense), or a BlockShuffle's grid "
        "reshape and second product"))
        for node in model.graph if node.op_type in ("MatMul", "Einsum") and node.domain == ""
        and len(node.inputs) == 2 and len(const_shape(node.inputs[1]) or ()) == 3]
    fff_roots = set()
    for node in model.graph:
        fff = ffn_fff.rules.near_miss(node)
        if fff is not None:
            out.append(NearMiss(nodes=[node.name or node.op_type], reason=fff))
            fff_roots.add(id(node))
    out += [NearMiss(nodes=_names(region), reason=_quantized_failure(model, region)
                     or _best_failure(model, region[-1]))
            for region in _ffn_shaped(model.graph) if id(region[-1]) not in fff_roots]
    for owner, attr, graph in _subgraphs(model.graph):
        where = f"in the {attr} of {owner.op_type} {owner.name!r}: {SUBGRAPH}"
        out += [NearMiss(nodes=_names(region), reason=where) for region in _ffn_shaped(graph)]
    return out


def _names(region: list[ir.Node]) -> list[str]:
    return [n.name or n.op_type for n in region]


def _ffn_shaped(graph: ir.Graph) -> Iterator[list[ir.Node]]:
    """(first projection, activation, second projection) of every region of ``graph``
    shaped like an FFN that no rule replaced."""
    for node in graph:
        if not _projection(node) or node.domain == CANON:
            continue
        act = node.inputs[0].producer() if node.inputs[0] is not None else None
        if act is None or (act.op_type not in ACTIVATION_OPS and act.op_type not in
                           QUANTIZING_OPS):
            continue
        first = _upstream_projection(act.inputs[0]) if act.inputs else None
        if first is not None:
            yield [first, act, node]


def _subgraphs(graph: ir.Graph) -> Iterator[tuple[ir.Node, str, ir.Graph]]:
    """(owning node, attribute name, subgraph) of every subgraph under ``graph``, nested
    ones included."""
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                inner = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                inner = list(attr.value)
            else:
                continue
            for sub in inner:
                yield node, attr.name, sub
                yield from _subgraphs(sub)


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


def _quantized_failure(model: ir.Model, region: list[ir.Node]) -> str | None:
    """Why a region with a quantized projection or quantized activations is not a site
    (None: neither)."""
    for node in (region[0], region[-1]):
        if canonical_quant.quantized_source(node):
            return canonical_quant.why_not(model, node)
    for node in region:
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if _fake_quantized(p):
                name = (p.attributes["original_names"].value[-1]
                        if canonical_quant.fake_quant(p) else p.name)
                return (f"activations quantized in the graph (DequantizeLinear {name!r} "
                        "feeds the region) in a form fffc does not read: static int8 "
                        "activations (QDQ) are read in ReLU, ReGLU and dReLU FFNs "
                        "(quantize_static's pairs on the gate, up and hidden activations); "
                        "quantize the weights only (MatMulNBitsQuantizer, quantize_dynamic, "
                        "or QDQ on weights alone) otherwise")
    return None


def _fake_quantized(node: ir.Node | None) -> bool:
    """``node`` is the DequantizeLinear of a QuantizeLinear, or its canonical FakeQuant: an
    activation quantized in the graph (a weight's DequantizeLinear reads constant codes)."""
    if canonical_quant.fake_quant(node):
        return True
    if node is None or node.op_type != "DequantizeLinear" or node.domain != "":
        return False
    q = node.inputs[0].producer() if node.inputs[0] is not None else None
    return q is not None and q.op_type == "QuantizeLinear" and q.domain == ""


def _best_failure(model: ir.Model, root: ir.Node) -> str:
    candidates = [root, *[u for u, _ in root.outputs[0].uses()]]
    return best_failure(model, [r for f in FFN_FAMILIES for r in f.rules.rules], candidates,
                        "no FFN rule matches this activation/projection structure")
