"""The FFN markers detection leaves in the graph, read as one typed record per site kind.

Each rule family replaces the FFN it matched with one ``ai.fffc.canon::FFN`` marker node: its
inputs are those of the ``ai.fffc`` op its kind lowers to (``OP_OF_KIND``), by position and
in the matched graph's orientation (an FFF's W_in as the MatMul reads it, [d_in, K·n]); its
attributes say what was found (kind, activation, the rule, the matched nodes, and per kind
the tree shape or the routing). A marker that keeps its matched region (FFF, MoD) holds it in
the graph attribute ``original``. ``decode`` reads a marker once into its record; the
families build Sites from the records and the lowering turns them into ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from fffc.contract.kinds import SiteKind
from fffc.contract.ops import FAST_FEED_FORWARD, ROUTED_FFN, SPARSE_FFN, STRUCTURED_FFN, OpSpec

from ._common import CANON

MARKER = "FFN"  # op type of a marker in the CANON domain

OP_OF_KIND: dict[SiteKind, OpSpec] = {
    SiteKind.DENSE: SPARSE_FFN, SiteKind.GATED: SPARSE_FFN, SiteKind.FFF: FAST_FEED_FORWARD,
    SiteKind.STRUCTURED: STRUCTURED_FFN, SiteKind.ROUTED: ROUTED_FFN,
}
# the SparseFFN inputs a dense/gated marker carries (the rest are the plan's parameters)
FFN_INPUTS = ("X", "W1", "B1", "W2", "B2", "WU", "AQ")


def markers(graph: ir.Graph) -> list[ir.Node]:
    """The graph's marker nodes, in graph order."""
    return [n for n in graph if n.domain == CANON and n.op_type == MARKER]


def marker_inputs(spec: OpSpec, **values: ir.Value | None) -> list[ir.Value | None]:
    """A marker's positional inputs from ``values`` by the op's input names: every position
    up to the last name given (absent ones None)."""
    names = [a.name for a in spec.inputs]
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"{spec.name} has no inputs {sorted(unknown)}")
    last = max(names.index(n) for n in values)
    return [values.get(n) for n in names[: last + 1]]


def kind_of(node: ir.Node) -> SiteKind:
    return SiteKind(node.attributes.get_string("kind", ""))


@dataclass(frozen=True)
class Marker:
    """What every marker says: the node, its kind and rule, its inputs by op input name."""

    node: ir.Node
    kind: SiteKind
    rule: str
    activation: str
    matched_nodes: str  # comma-separated names of the nodes the rule matched
    inputs: Mapping[str, ir.Value | None]  # by the op's input name; absent: None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op(self) -> OpSpec:
        return OP_OF_KIND[self.kind]

    @property
    def matched(self) -> list[str]:
        return [n for n in self.matched_nodes.split(",") if n]


@dataclass(frozen=True)
class FFNMarker(Marker):
    """A dense or gated FFN: SparseFFN's X, W1, B1, W2, B2, WU (WU as [d_in, d_ff]), AQ
    (the activations' fake quantizations found inside it, ``fffc.contract.act_quant``)."""

    up_activation: str


@dataclass(frozen=True)
class FFFMarker(Marker):
    """An FFF: FastFeedForward's X, W_in ([d_in, K·n], the MatMul orientation), B_in, W_out."""

    trees: int
    depth: int
    tie_break: str


@dataclass(frozen=True)
class StructuredMarker(Marker):
    """A structured FFN: StructuredFFN's X, A1, U1, B1, A2, U2, B2, S1, S2 (M1, M2 absent)."""


@dataclass(frozen=True)
class Routing:
    """How a routed marker (or RoutedFFN node) selects and combines tokens."""

    selection: str  # "topk" | "threshold"
    k: int
    capacity: dict | None  # k computed from the sequence length (k_* attributes), else None
    router: str  # "raw" | "sigmoid"
    epsilon: float  # of the pre-norm (with LS, LB)
    x_coef: tuple[float, float]
    delta_coef: tuple[float, float]


@dataclass(frozen=True)
class RoutedMarker(Marker):
    """A Mixture-of-Depths block: RoutedFFN's X, WR, BR, W1, B1, W2, B2, WA, BA, LS, LB."""

    routing: Routing


def _inputs(node: ir.Node, spec: OpSpec) -> dict[str, ir.Value | None]:
    values = list(node.inputs)
    return {a.name: values[i] if i < len(values) else None for i, a in enumerate(spec.inputs)}


def capacity_of(node: ir.Node) -> dict | None:
    """The k_* attributes of a routed marker or RoutedFFN (None: a constant k)."""
    a = node.attributes
    if a.get_float("k_scale", 0.0) <= 0 and a.get_int("k_divisor", 0) <= 0:
        return None
    return {"scale": a.get_float("k_scale", 0.0), "divisor": a.get_int("k_divisor", 0),
            "round": a.get_string("k_round", "trunc"), "min": a.get_int("k_min", 0)}


def routing_of(node: ir.Node) -> Routing:
    """A routed marker's (or RoutedFFN node's) routing attributes."""
    a = node.attributes
    return Routing(selection=a.get_string("selection", "topk"), k=a.get_int("k", 1),
                   capacity=capacity_of(node), router=a.get_string("router", "raw"),
                   epsilon=a.get_float("epsilon", 1e-5),
                   x_coef=tuple(float(v) for v in a["x_coef"].value),
                   delta_coef=tuple(float(v) for v in a["delta_coef"].value))


def _common(node: ir.Node, spec: OpSpec) -> dict:
    get = node.attributes.get_string
    return {"node": node, "kind": kind_of(node), "rule": get("rule", ""),
            "activation": get("activation", ""), "matched_nodes": get("matched_nodes", ""),
            "inputs": _inputs(node, spec)}


def _ffn(node: ir.Node) -> FFNMarker:
    common = _common(node, SPARSE_FFN)
    common["inputs"] = {n: common["inputs"][n] for n in FFN_INPUTS}
    return FFNMarker(**common, up_activation=node.attributes.get_string("up_activation", "none"))


def _fff(node: ir.Node) -> FFFMarker:
    a = node.attributes
    return FFFMarker(**_common(node, FAST_FEED_FORWARD), trees=a.get_int("trees", 1),
                     depth=a.get_int("depth", 1), tie_break=a.get_string("tie_break", "gt"))


_DECODE = {
    SiteKind.DENSE: _ffn, SiteKind.GATED: _ffn, SiteKind.FFF: _fff,
    SiteKind.STRUCTURED: lambda node: StructuredMarker(**_common(node, STRUCTURED_FFN)),
    SiteKind.ROUTED: lambda node: RoutedMarker(**_common(node, ROUTED_FFN),
                                               routing=routing_of(node)),
}


def decode(node: ir.Node) -> Marker:
    """The typed record of a marker node."""
    return _DECODE[kind_of(node)](node)
