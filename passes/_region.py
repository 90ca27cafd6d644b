"""Rules over regions onnxscript's pattern matcher cannot express.

An FFF's path mask is a chain of as many scatters as the tree is deep, its unrolled walk a sum
of any number of terms, and a Mixture-of-Depths combine any affine expression of the routed
tokens: no fixed pattern graph. A ``RegionRule`` keeps the rule interface all the same —
where a region may end (``takes``, the pattern's root), ``check`` (a ``RegionMatch``: the
region's record, or the reason it is not one, "what: expected x, got y"), ``rewrite`` (the
marker that replaces it) — and a family module ends in one ``RegionRuleSet``. Reading
helpers raise ``MatchFailure``, which ``check`` turns into the failed result.

The region itself is every node between the match's input and its root; it is replaced only
when none of its values is used outside (else the reason is ``USED_OUTSIDE``), and it is kept
in the marker's ``original`` graph, so that a site that is not lowered goes back exactly as
it was (``restore``).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

USED_OUTSIDE = "the region's nodes are also used outside it"
# ops that compute on a region's values: such a node used outside entangles the region
_COMPUTING = ("Gelu", "ScatterElements", "GatherElements", "Greater", "MatMul", "ReduceSum",
              "GatherND")


class MatchFailure(Exception):
    """Raised by a region's reading helpers with the reason; ``RegionRule.check`` returns it
    as a failed ``RegionMatch``."""

    def __init__(self, reason: str, *sources: ir.Node | ir.Value):
        super().__init__(reason)
        self.reason, self.sources = reason, sources


class RegionMatch:
    """A region rule's result: truthy with ``found`` (the rule's record of the region), else
    falsy with the ``reason`` (and the values or nodes responsible)."""

    def __init__(self, found: Any = None):
        self.found = found
        self.reason = ""
        self.sources: tuple = ()

    def fail(self, reason: str, *sources: ir.Node | ir.Value) -> RegionMatch:
        self.found, self.reason, self.sources = None, reason, sources
        return self

    def __bool__(self) -> bool:
        return self.found is not None

    def __repr__(self) -> str:
        return f"RegionMatch({self.found!r})" if self else f"RegionMatch(fail={self.reason!r})"


class RegionRule(abc.ABC):
    """A rule whose region is read by code: ``takes`` (the root), ``read`` (raises
    ``MatchFailure``), ``rewrite`` (the marker). ``found.x`` is where the region starts."""

    tag = "region"  # names the kept original: ``<output>__<tag>_original``

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abc.abstractmethod
    def takes(self, root: ir.Node) -> bool:
        """Whether a region of this rule may end at ``root`` (a cheap test on the node)."""

    def reportable(self, root: ir.Node) -> bool:
        """Whether a root this rule refuses is FFN-like enough for a near-miss report."""
        return True

    @abc.abstractmethod
    def read(self, root: ir.Node) -> Any:
        """The region's record (with ``x``, its input); raises ``MatchFailure``."""

    @abc.abstractmethod
    def rewrite(self, graph: ir.Graph, root: ir.Node, found: Any,
                region: list[ir.Node]) -> ir.Node:
        """The marker node (not yet in the graph) that stands for ``region``."""

    def check(self, root: ir.Node) -> RegionMatch:
        try:
            return RegionMatch(self.read(root))
        except MatchFailure as e:
            return RegionMatch().fail(e.reason, *e.sources)

    def match(self, graph: ir.Graph, root: ir.Node) -> tuple[RegionMatch, list[ir.Node]]:
        """``check`` and the region (empty when the check or the region fails)."""
        result = self.check(root)
        if not result:
            return result, []
        try:
            return result, region(root, result.found.x, graph)
        except MatchFailure as e:
            return result.fail(USED_OUTSIDE, *e.sources), []

    def try_rewrite(self, graph: ir.Graph, root: ir.Node) -> bool:
        """Replace the region ending at ``root`` by its marker, if it matches."""
        result, nodes = self.match(graph, root)
        if not result:
            return False
        replace_region(graph, root, nodes, self.rewrite(graph, root, result.found, nodes),
                       self.tag)
        return True


class RegionRuleSet:
    """A family's region rules, tried at every root in graph order (the roots are collected
    before any region is replaced)."""

    def __init__(self, rules: Iterable[RegionRule], title: str):
        self.rules = list(rules)
        self.title = title  # how near-miss reasons name the family

    def roots(self, graph: ir.Graph) -> list[tuple[ir.Node, RegionRule]]:
        return [(n, r) for n in graph for r in self.rules if r.takes(n)]

    def apply_to_model(self, model: ir.Model) -> int:
        """Replace every matching region with its marker; the number replaced."""
        done: set[int] = set()
        for root, rule in self.roots(model.graph):
            if id(root) not in done and rule.try_rewrite(model.graph, root):
                done.add(id(root))
        return len(done)

    def near_miss(self, root: ir.Node) -> str | None:
        """Why no rule of the set takes a reportable ``root`` (None: not one of its roots).
        A root that reads as a region was refused because its nodes are used outside it."""
        for rule in self.rules:
            if rule.takes(root) and rule.reportable(root):
                result = rule.check(root)
                return f"{self.title}: {result.reason if not result else USED_OUTSIDE}"
        return None

    def near_misses(self, graph: ir.Graph) -> list[tuple[ir.Node, str]]:
        """(root, reason) of every reportable root left in the graph, in graph order."""
        out = []
        for root, rule in self.roots(graph):
            if rule.reportable(root):
                result = rule.check(root)
                out.append((root, f"{self.title}: "
                                  f"{result.reason if not result else USED_OUTSIDE}"))
        return out


def region(root: ir.Node, x: ir.Value, graph: ir.Graph) -> list[ir.Node]:
    """Every node ``root`` depends on between ``x`` (exclusive) and it, in graph order; each
    one's outputs must stay inside the region (else ``MatchFailure``)."""
    seen: set[int] = set()
    stack = [root]
    nodes: list[ir.Node] = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        for v in node.inputs:
            if v is None or v is x:
                continue
            p = v.producer()
            if p is not None and p.graph is graph:
                stack.append(p)
    # Nodes whose outputs are also used outside (dynamo shares Shape(x) → sizes with the
    # output Reshape) stay in the graph with everything they depend on, as long as none of
    # it computes on the region's values (then the region really is entangled).
    inside = {id(n) for n in nodes}
    shared: dict[int, ir.Node] = {}
    stack = [n for n in nodes if n is not root and any(
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
    core = {id(n) for n in (root, *(v.producer() for v in root.inputs if v is not None))}
    for node in shared.values():
        if id(node) in core or node.op_type in _COMPUTING:
            raise MatchFailure(f"{node.op_type} {node.name!r}: its output is used outside "
                               "the region", node)
    nodes = [n for n in nodes if id(n) not in shared]
    order = {id(n): i for i, n in enumerate(graph)}
    return sorted(nodes, key=lambda n: order[id(n)])


def replace_region(graph: ir.Graph, root: ir.Node, nodes: list[ir.Node], marker: ir.Node,
                   tag: str) -> None:
    """Put ``marker`` where the region ``nodes`` (ending in ``root``) was; the region is kept
    as the marker's ``original`` graph, for ``restore``."""
    out = root.outputs[0]
    graph.insert_before(nodes[0], marker)
    new_out = marker.outputs[0]
    for i, o in enumerate(graph.outputs):  # first: a graph output cannot be replaced in uses
        if o is out:
            graph.outputs[i] = new_out
    ir.convenience.replace_all_uses_with(out, new_out)
    new_out.name, out.name = out.name, f"{out.name}__{tag}_original"
    new_out.shape, new_out.type = out.shape, out.type
    graph.remove(nodes, safe=False)
    original = ir.Graph([], [out], nodes=nodes, name=f"{root.name or tag}_original")
    marker.attributes["original"] = ir.AttrGraph("original", original)


def detach(marker: ir.Node) -> tuple[list[ir.Node], ir.Value]:
    """A marker's kept region taken out of it: its nodes (in order) and its output."""
    original = marker.attributes["original"].value
    nodes = list(original)
    out = original.outputs[0]
    original.outputs.clear()
    original.remove(nodes, safe=False)
    return nodes, out


def restore(graph: ir.Graph, marker: ir.Node) -> ir.Value:
    """Put a kept region back where its marker is (in ``graph``, the marker's own); returns
    the region's output."""
    nodes, out = detach(marker)
    graph.insert_before(marker, nodes)
    return out
