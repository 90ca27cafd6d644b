"""Finds UltraFastBERT FastFeedForward layers (the released masked form) after canonicalization.

Matches, from the output projection back::

    L = MatMul(x, W_in) + b_in                      (canonical linear; Gemm in the export)
    A = Reshape(Gelu(L), [-1, K, n])                (canonical exact-erf Gelu)
    M = ScatterElements(... ScatterElements(zeros, j0, 1) ..., j_D, 1)   axis 2, D+1 of them,
        the indices walked with GatherElements(Reshape(Cast(Greater(L, 0))), j)
    Y = MatMul(Flatten(A * M), W_out)               ([K·n, H_out])

as exported by torch.onnx's TorchScript (opset 17, 20) and dynamo (opset 18, 20) exporters
from ``fffc.torch.FastFeedForward`` (the UltraFastBERT layer). K and D come from the
weight shapes and the chain length (n = 2^(D+1) − 1 is checked), the tie-break from the
comparison (``> 0``: "gt", ``>= 0``: "ge", the op's ``tie_break``). The whole region is replaced by one ``ai.fffc.canon::FFN``
marker of kind ``fff``; the matched nodes are kept in its ``original`` graph attribute, so a
site that is not lowered (or fails verification) goes back exactly as it was. This is a
structural match: the compile step proves each site numerically (reference walk vs the
original region on probe inputs) before it is rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from ._common import CANON, const_array, initializer

TIE_BREAK_OF = {"Greater": "gt", "GreaterOrEqual": "ge"}  # the branch's comparison with 0
_COLS = "__cols"  # name suffix of an initializer made by transposed_initializer


class Fail(Exception):
    pass


def _producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node:
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain != domain:
        got = "an input" if node is None else f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        raise Fail(f"expected {op_type}, got {got}")
    return node


def _linear(value: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(x, W [in, out], b) of ``L = MatMul(x, W) + b`` (either Add operand order)."""
    add = _producer(value, "Add")
    for mm_out, b in (add.inputs, add.inputs[::-1]):
        p = mm_out.producer() if mm_out is not None else None
        if p is not None and p.op_type == "MatMul" and p.domain == "" and const_array(b) is not None:
            if const_array(p.inputs[1]) is None:
                raise Fail("the node projection's weight is not a constant")
            return p.inputs[0], p.inputs[1], b
    raise Fail("expected MatMul(x, W_in) + b_in before the Gelu")


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


def match(out_mm: ir.Node) -> dict:
    """What an FFF region ending at the MatMul ``out_mm`` is; raises Fail with the reason."""
    w_out = out_mm.inputs[1]
    w_out_arr = const_array(w_out)
    if w_out_arr is None or w_out_arr.ndim != 2:
        raise Fail("the output projection's weight is not a constant matrix")
    flat = out_mm.inputs[0].producer()
    if flat is None or flat.op_type not in ("Flatten", "Reshape"):
        raise Fail("expected Flatten/Reshape before the output projection")
    mul = _producer(flat.inputs[0], "Mul")
    for a, m in (mul.inputs, mul.inputs[::-1]):
        try:
            reshape = _producer(a, "Reshape")
            gelu = _producer(reshape.inputs[0], "Gelu", CANON)
            scatter = _producer(m, "ScatterElements")
            break
        except Fail:
            continue
    else:
        raise Fail("expected Reshape(Gelu(L)) * ScatterElements-mask")
    if gelu.attributes.get_string("approximate", "none") != "none":
        raise Fail("FFF uses the exact erf GELU; got the tanh approximation")
    logits = gelu.inputs[0]
    x, w_in, b_in = _linear(logits)
    w_in_arr = const_array(w_in)
    levels, root, node = 0, scatter, scatter
    while node is not None and node.op_type == "ScatterElements":
        if node.attributes.get_int("axis", 0) not in (2, -1):
            raise Fail("the path mask is not scattered along the node axis")
        levels, root = levels + 1, node
        node = node.inputs[0].producer()
    if not _is_zeros(root.inputs[0]):
        raise Fail("the path mask does not start from zeros")
    depth = levels - 1
    n = 2 ** (depth + 1) - 1
    width = w_in_arr.shape[1]
    if depth < 1 or width % n:
        raise Fail(f"{levels} scatters give trees of {n} nodes, which do not divide the "
                    f"{width} node projections")
    trees = width // n
    if w_out_arr.shape[0] != width:
        raise Fail(f"output projection has {w_out_arr.shape[0]} rows, expected {width}")
    compares = [c for c in logits.uses() if c.node.op_type in ("Greater", "GreaterOrEqual")]
    if len(compares) != 1:
        raise Fail("expected one comparison of the node logits with 0 (the branch)")
    cmp = compares[0].node
    threshold = const_array(cmp.inputs[1])
    if cmp.inputs[0] is not logits or threshold is None or threshold.size != 1 or threshold.item():
        raise Fail("the branch must compare the logits with 0")
    return {"x": x, "w_in": w_in, "b_in": b_in, "w_out": w_out, "trees": trees,
            "depth": depth, "gelu": gelu, "tie_break": TIE_BREAK_OF[cmp.op_type]}


def _region(out_mm: ir.Node, x: ir.Value, graph: ir.Graph) -> list[ir.Node]:
    """Every node the output depends on between ``x`` (exclusive) and the output, in graph
    order; each one's outputs must stay inside the region (else it is not replaceable)."""
    seen: set[int] = set()
    stack = [out_mm]
    region: list[ir.Node] = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        region.append(node)
        for v in node.inputs:
            if v is None or v is x:
                continue
            p = v.producer()
            if p is not None and p.graph is graph:
                stack.append(p)
    # Nodes whose outputs are also used outside (dynamo shares Shape(x) → sizes with the
    # output Reshape) stay in the graph with everything they depend on, as long as none of
    # it computes on the FFF's values (then the region really is entangled).
    inside = {id(n) for n in region}
    shared: dict[int, ir.Node] = {}
    stack = [n for n in region if n is not out_mm and any(
        any(id(u.node) not in inside for u in v.uses()) or v in graph.outputs for v in n.outputs)]
    while stack:
        node = stack.pop()
        if id(node) in shared:
            continue
        shared[id(node)] = node
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is not None and id(p) in inside:
                stack.append(p)
    core = {id(n) for n in (out_mm, *(v.producer() for v in out_mm.inputs if v is not None))}
    for node in shared.values():
        if id(node) in core or node.op_type in ("Gelu", "ScatterElements", "GatherElements",
                                                  "Greater", "MatMul", "ReduceSum",
                                                  "GatherND"):
            raise Fail(f"{node.op_type} {node.name!r}: its output is used outside the FFF")
    region = [n for n in region if id(n) not in shared]
    order = {id(n): i for i, n in enumerate(graph)}
    return sorted(region, key=lambda n: order[id(n)])


def replace_matches(graph: ir.Graph, roots: Iterable[ir.Node],
                    match_root: Callable[[ir.Node], dict],
                    replace: Callable[[ir.Node, list[ir.Node], dict], None]) -> int:
    """Each root that ``match_root`` takes, with its region back to ``m["x"]``, handed to
    ``replace``; the number replaced (roots that fail to match are left for near misses)."""
    found = 0
    for root in list(roots):
        try:
            m = match_root(root)
            region = _region(root, m["x"], graph)
        except Fail:
            continue
        replace(root, region, m)
        found += 1
    return found


def detect(model: ir.Model) -> int:
    """Replace each FFF region with a marker; the number replaced. Regions that look like an
    FFF but do not match are reported by ``detect.near_misses`` with ``match``'s reason."""
    graph = model.graph
    return replace_matches(graph, (n for n in graph if n.op_type == "MatMul" and n.domain == ""),
                           match, lambda root, region, m: _replace(graph, root, region, m))


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


def transposed_initializer(graph: ir.Graph, value: ir.Value) -> ir.Value:
    """``value.T`` as a new initializer (markers carry W_in as [H, K·n], the MatMul
    orientation); ``transposed_from`` finds ``value`` again for the op's row layout."""
    return initializer(graph, f"{value.name}{_COLS}", const_array(value).T)


def transposed_from(graph: ir.Graph, value: ir.Value) -> ir.Value | None:
    """The initializer ``value`` was transposed from by ``transposed_initializer``, if it is
    still in the graph with the same contents (names survive proto round trips, meta not)."""
    name = value.name or ""
    original = graph.initializers.get(name[: -len(_COLS)]) if name.endswith(_COLS) else None
    if original is None:
        return None
    a, b = const_array(value), const_array(original)
    return original if a is not None and b is not None and np.array_equal(a.T, b) else None


def _replace(graph: ir.Graph, out_mm: ir.Node, region: list[ir.Node], m: dict,
             rule: str = "fff_masked") -> None:
    marker = ir.Node(
        CANON, "FFN", [m["x"], m["w_in"], m["b_in"], m["w_out"]],
        attributes=[
            ir.AttrString("kind", "fff"), ir.AttrString("activation", "gelu"),
            ir.AttrString("up_activation", "none"), ir.AttrString("rule", rule),
            ir.AttrString("matched_nodes", ",".join(n.name or n.op_type for n in region)),
            ir.AttrInt64("trees", m["trees"]), ir.AttrInt64("depth", m["depth"]),
            ir.AttrString("tie_break", m["tie_break"]),
        ],
        num_outputs=1,
    )
    replace_region(graph, out_mm, region, marker, "fff")


def replace_region(graph: ir.Graph, root: ir.Node, region: list[ir.Node], marker: ir.Node,
                   tag: str) -> None:
    """Put ``marker`` where ``region`` (ending in ``root``) was; the region is kept as the
    marker's ``original`` graph, for ``restore``."""
    out = root.outputs[0]
    graph.insert_before(region[0], marker)
    new_out = marker.outputs[0]
    for i, o in enumerate(graph.outputs):  # first: a graph output cannot be replaced in uses
        if o is out:
            graph.outputs[i] = new_out
    ir.convenience.replace_all_uses_with(out, new_out)
    new_out.name, out.name = out.name, f"{out.name}__{tag}_original"
    new_out.shape, new_out.type = out.shape, out.type
    graph.remove(region, safe=False)
    original = ir.Graph([], [out], nodes=region, name=f"{root.name or tag}_original")
    marker.attributes["original"] = ir.AttrGraph("original", original)


def restore(graph: ir.Graph, marker: ir.Node) -> ir.Value:
    """Put a kept FFF region back where its marker is; returns the region's output."""
    original = marker.attributes["original"].value
    nodes = list(original)
    out = original.outputs[0]
    original.outputs.clear()
    original.remove(nodes, safe=False)
    graph.insert_before(marker, nodes)
    return out
