"""Finds UltraFastBERT FastFeedForward layers (the released masked form) after canonicalization.

Matches, from the output projection back::

    L = MatMul(x, W_in) + b_in                      (canonical linear; Gemm in the export)
    A = Reshape(Gelu(L), [.., K, n])  or  Gelu(Reshape(L, [.., K, n]))   (exact-erf Gelu)
    M = ScatterElements(... ScatterElements(zeros, j0, 1) ..., j_D, 1)   last axis, D+1 of
        them, the indices walked with GatherElements(Cast(Greater(L, 0)) viewed as A, j)
    Y = MatMul(Flatten(A * M), W_out)               ([K·n, H_out])

with the tokens flattened ([T, K, n]) or the leading dims kept ([B, S, K, n]); the views
(Reshape/Flatten, constant or computed targets) may come before or after the Gelu and the
comparison, as an elementwise op gives the same values either way.

as exported by torch.onnx's TorchScript (opset 17, 20) and dynamo (opset 18, 20) exporters
from ``fffc.torch.FastFeedForward`` (the UltraFastBERT layer). K and D come from the
weight shapes and the chain length (n = 2^(D+1) − 1 is checked), the tie-break from the
comparison (``> 0``: "gt", ``>= 0``: "ge", the op's ``tie_break``). The whole region is
replaced by one ``ai.fffc.canon::FFN`` marker of kind ``fff``; the matched nodes are kept in
its ``original`` graph attribute, so a site that is not lowered (or fails verification) goes
back exactly as it was. This is a structural match: the compile step proves each site
numerically (reference walk vs the original region on probe inputs) before it is rewritten.
A variable-depth scatter chain is no fixed pattern graph, so the rule is a ``RegionRule``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from fffc.contract.kinds import SiteKind
from fffc.contract.ops import FAST_FEED_FORWARD
from fffc.contract.sites import Site

from ._common import CANON, const_array, const_shape, transposed_initializer
from ._region import MatchFailure, RegionRule, RegionRuleSet
from .markers import FFFMarker, marker_inputs

TIE_BREAK_OF = {"Greater": "gt", "GreaterOrEqual": "ge"}  # the branch's comparison with 0


@dataclass(frozen=True)
class Tree:
    """What an FFF region computes: its input, weights and the forest's shape."""

    x: ir.Value
    w_in: ir.Value  # [d_in, K·n] as the masked form's MatMul reads it; ``rows``: [K·n, d_in]
    b_in: ir.Value
    w_out: ir.Value  # [K·n, d_out]
    trees: int
    depth: int
    tie_break: str
    rows: bool = False


def _producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain != domain:
        got = "an input" if node is None else f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        raise MatchFailure(f"expected {op_type}, got {got}")
    return node



_VIEWS = ("Reshape", "Flatten")  # ops that change a tensor's shape, never its values' order


def _unviewed(value: ir.Value) -> ir.Value:
    """``value`` with the views (Reshape/Flatten) that produced it stripped: an elementwise
    op gives the same values before or after a view, so the node axis may be split from the
    token rows before or after the Gelu and the comparison."""
    node = value.producer()
    while node is not None and node.op_type in _VIEWS and node.domain == "":
        value = node.inputs[0]
        node = value.producer()
    return value


def _views(value: ir.Value) -> list[ir.Value]:
    """``value`` and every Reshape/Flatten chain of it."""
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        out.append(v)
        stack.extend(u.node.outputs[0] for u in v.uses()
                     if u.node.op_type in _VIEWS and u.node.domain == "" and u.idx == 0)
    return out


def _last_axis(scatter: ir.Node) -> bool:
    """A ScatterElements along its data's last axis ([T, K, n] or [B, S, K, n])."""
    axis = scatter.attributes.get_int("axis", 0)
    shape = scatter.inputs[0].shape
    rank = shape.rank() if shape is not None else None
    return axis == -1 or (axis == rank - 1 if rank is not None else axis == 2)


def _linear(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(x, W [in, out], b) of ``L = MatMul(x, W) + b`` (either Add operand order)."""
    add = _producer(value, "Add")
    for mm_out, b in (add.inputs, add.inputs[::-1]):
        p = mm_out.producer() if mm_out is not None else None
        if p is not None and p.op_type == "MatMul" and p.domain == "" and const_array(b) is not None:
            if const_array(p.inputs[1]) is None:
                raise MatchFailure("the node projection's weight is not a constant", p)
            return p.inputs[0], p.inputs[1], b
    raise MatchFailure("expected MatMul(x, W_in) + b_in before the Gelu", add)


def _is_zeros(value: ir.Value) -> bool:
    p = value.producer()
    if p is None:
        arr = const_array(value)
        return arr is not None and not arr.any()
    if p.op_type == "ConstantOfShape":
        t = p.attributes.get("value")
        return t is None or not np.asarray(t.value.numpy()).any()
    if p.op_type == "Expand":
        arr = const_array(p.inputs[0])
        return arr is not None and not arr.any()
    return False


def looks_like_fff(out_mm: ir.Node) -> bool:
    """A MatMul fed (within a few nodes) by a ScatterElements chain: worth a near-miss line."""
    frontier, seen = [out_mm], 0
    while frontier and seen < 6:
        nxt = []
        for n in frontier:
            for v in n.inputs:
                p = v.producer() if v is not None else None
                if p is None:
                    continue
                if p.op_type == "ScatterElements":
                    return True
                nxt.append(p)
        frontier, seen = nxt, seen + 1
    return False


def fff_marker(graph: ir.Graph, tree: Tree, region: list[ir.Node], rule: str) -> ir.Node:
    """The ``fff`` marker of a tree (a walk's row-per-node W_in given as a transposed copy)."""
    w_in = transposed_initializer(graph, tree.w_in) if tree.rows else tree.w_in
    return ir.Node(
        CANON, "FFN",
        marker_inputs(FAST_FEED_FORWARD, X=tree.x, W_in=w_in, B_in=tree.b_in, W_out=tree.w_out),
        attributes=[
            ir.AttrString("kind", str(SiteKind.FFF)), ir.AttrString("activation", "gelu"),
            ir.AttrString("up_activation", "none"), ir.AttrString("rule", rule),
            ir.AttrString("matched_nodes", ",".join(n.name or n.op_type for n in region)),
            ir.AttrInt64("trees", tree.trees), ir.AttrInt64("depth", tree.depth),
            ir.AttrString("tie_break", tree.tie_break),
        ],
        num_outputs=1,
    )


def site(marker: FFFMarker) -> Site:
    """The Site of an ``fff`` marker (masked or walk form): the forest's widths and shape."""
    w_in, w_out = (const_array(marker.inputs[n]) for n in ("W_in", "W_out"))
    return Site(
        name=marker.name, rule=marker.rule, kind=marker.kind, activation=marker.activation,
        up_activation="none", d_model=int(w_in.shape[0]), d_ff=int(w_in.shape[1]),
        d_out=int(w_out.shape[1]), has_b1=marker.inputs["B_in"] is not None, has_b2=False,
        dtype=str(w_in.dtype), matched_nodes=marker.matched, trees=marker.trees,
        depth=marker.depth, tie_break=marker.tie_break,
    )


class MaskedFFF(RegionRule):
    """Replaces ``MatMul(Flatten(Reshape(Gelu(x·W_in + b_in)) * path mask), W_out)``, the
    path mask D+1 ``ScatterElements`` over zeros, with an ``fff`` marker.

    Matches: fffc.torch.FastFeedForward (UltraFastBERT's layer) from the TorchScript (opset
    17, 20) and dynamo (opset 18, 20) exporters.
    """

    tag = "fff"

    def takes(self, root: ir.Node) -> bool:
        return root.op_type == "MatMul" and root.domain == ""

    def reportable(self, root: ir.Node) -> bool:
        return looks_like_fff(root)

    def read(self, out_mm: ir.Node) -> Tree:
        w_out = out_mm.inputs[1]
        w_out_shape = const_shape(w_out)  # a quantized weight is not dequantized to match
        if w_out_shape is None or len(w_out_shape) != 2:
            raise MatchFailure("the output projection's weight is not a constant matrix", w_out)
        flat = out_mm.inputs[0].producer()
        if flat is None or flat.op_type not in _VIEWS:
            raise MatchFailure("expected Flatten/Reshape before the output projection")
        mul = _producer(flat.inputs[0], "Mul")
        for a, m in (mul.inputs, mul.inputs[::-1]):
            try:
                gelu = _producer(_unviewed(a), "Gelu", CANON)
                scatter = _producer(m, "ScatterElements")
                break
            except MatchFailure:
                continue
        else:
            raise MatchFailure("expected Gelu(L) (viewed as [.., K, n] before or after the "
                               "Gelu) * ScatterElements-mask", mul)
        if gelu.attributes.get_string("approximate", "none") != "none":
            raise MatchFailure("FFF uses the exact erf GELU; got the tanh approximation", gelu)
        logits = _unviewed(gelu.inputs[0])
        x, w_in, b_in = _linear(logits)
        w_in_arr = const_array(w_in)
        levels, root, node = 0, scatter, scatter
        while node is not None and node.op_type == "ScatterElements":
            if not _last_axis(node):
                raise MatchFailure("the path mask is not scattered along the node axis", node)
            levels, root = levels + 1, node
            node = node.inputs[0].producer()
        if not _is_zeros(root.inputs[0]):
            raise MatchFailure("the path mask does not start from zeros", root)
        depth = levels - 1
        n = 2 ** (depth + 1) - 1
        width = w_in_arr.shape[1]
        if depth < 1 or width % n:
            raise MatchFailure(f"{levels} scatters give trees of {n} nodes, which do not "
                               f"divide the {width} node projections", w_in)
        trees = width // n
        if w_out_shape[0] != width:
            raise MatchFailure(f"output projection has {w_out_shape[0]} rows, expected "
                               f"{width}", w_out)
        # the branch compares the logits, or a view of them, with 0
        compares = [u.node for v in _views(logits) for u in v.uses()
                    if u.node.op_type in ("Greater", "GreaterOrEqual") and u.idx == 0]
        if len(compares) != 1:
            raise MatchFailure("expected one comparison of the node logits with 0 (the branch)",
                               logits)
        cmp = compares[0]
        threshold = const_array(cmp.inputs[1])
        if threshold is None or threshold.size != 1 or threshold.item():
            raise MatchFailure("the branch must compare the logits with 0", cmp)
        return Tree(x, w_in, b_in, w_out, trees, depth, TIE_BREAK_OF[cmp.op_type])

    def rewrite(self, graph: ir.Graph, root: ir.Node, found: Tree,
                region: list[ir.Node]) -> ir.Node:
        return fff_marker(graph, found, region, self.name)


masked_fff_rule = MaskedFFF("fff_masked")
rules = RegionRuleSet([masked_fff_rule], title="FastFeedForward")
