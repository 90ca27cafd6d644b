"""Helpers shared by the rule families: constant inspection and domain names."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import pattern

from fffc.contract.ops import DOMAIN
from fffc.contract.quant import QuantizedWeight, dequantize

FFFC = DOMAIN
# Private domain for canonical forms that exist only between canonicalize and legalize.
CANON = "ai.fffc.canon"
MS = "com.microsoft"
_COLS = "__cols"  # name suffix of an initializer made by transposed_initializer
DEQUANTIZED = "Dequantized"  # a quantized weight in canonical form (``canonical_quant``)
# why a rule that would store a transposed, sliced or reshaped float32 copy of a weight
# refuses a quantized one: it stays the user's codes
QUANTIZED = "a quantized weight is kept as the user's codes, not copied to float32"


class RuleSequence:
    """A family's rule sets applied one after the other, each a pass over the whole graph
    with dead nodes dropped after it (an intermediate a dead node still reads would count as
    used outside the next match). ``rules``: every rule, in the order they are tried."""

    def __init__(self, *sets: pattern.RewriteRuleSet):
        self.sets = sets

    @property
    def rules(self) -> list[pattern.RewriteRule]:
        return [r for s in self.sets for r in s.rules]

    def apply_to_model(self, model: ir.Model) -> int:
        count = 0
        for rule_set in self.sets:
            count += rule_set.apply_to_model(model)
            common_passes.RemoveUnusedNodesPass()(model)
        return count


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind a value (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.domain == "":
            attr = producer.attributes.get("value")
            tensor = attr.as_tensor() if attr is not None else None
    if tensor is None and dequantized(value.producer()):
        return _dequantized_array(value.producer())
    if tensor is None:
        return None
    return tensor.numpy()


# a quantized weight reads as its float32 W [K, N], computed on demand: only the last few
# are kept (a site's projections), so that reading every projection of a model (a rule's
# match, tried at each MatMul) never holds all of them in float32 at once
_DEQUANTIZED_KEPT = 4
_dequantized_cache: OrderedDict[int, tuple[ir.Node, np.ndarray]] = OrderedDict()


def _dequantized_array(node: ir.Node) -> np.ndarray:
    """The float32 weight of the canonical ``Dequantized`` ``node`` (read-only: shared by
    the callers that read it while it is kept). The cache holds the node itself, so its
    ``id`` is not reused while its entry lives; the node's inputs are never rewritten in
    place (passes replace values), so an entry stays the node's weight."""
    hit = _dequantized_cache.get(id(node))
    if hit is not None and hit[0] is node:
        _dequantized_cache.move_to_end(id(node))
        return hit[1]
    w = dequantize(quantized_record(node), [const_array(v) for v in node.inputs])
    w.flags.writeable = False
    _dequantized_cache[id(node)] = (node, w)
    while len(_dequantized_cache) > _DEQUANTIZED_KEPT:
        _dequantized_cache.popitem(last=False)
    return w


def const_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of the constant behind a value (else None), without dequantizing a
    quantized weight (``const_array`` makes its float32 copy)."""
    p = value.producer() if value is not None else None
    if dequantized(p):
        q = quantized_record(p)
        return (q.k, q.n)
    arr = const_array(value)
    return None if arr is None else arr.shape


def dequantized(node: ir.Node | None) -> bool:
    """Whether ``node`` is a canonical quantized weight."""
    return node is not None and node.domain == CANON and node.op_type == DEQUANTIZED


def quantized_record(node: ir.Node) -> QuantizedWeight:
    """The ``QuantizedWeight`` a canonical ``Dequantized`` node carries."""
    a = node.attributes
    return QuantizedWeight.from_attributes(lambda name: a[name].value)


def initializer(graph: ir.Graph, name: str, arr: np.ndarray) -> ir.Value:
    """The graph's initializer ``name``, registered from ``arr`` (contiguous, its dtype) the
    first time: names are content-derived, so a second request is the same tensor."""
    if name in graph.initializers:
        return graph.initializers[name]
    arr = np.ascontiguousarray(arr)
    value = ir.Value(name=name, const_value=ir.tensor(arr, name=name), shape=ir.Shape(arr.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)))
    graph.register_initializer(value)
    return value


def transposed_initializer(graph: ir.Graph, value: ir.Value) -> ir.Value:
    """``value.T`` as a new initializer ``<name>__cols`` (an FFF walk's row-per-node W_in
    in a marker's MatMul orientation); ``transposed_from`` finds ``value`` again."""
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


def is_scalar_close(value: ir.Value | None, expected: float, rtol: float = 1e-3) -> bool:
    """True when the value is a constant whose every element is ``expected`` (within rtol)."""
    arr = const_array(value)
    if arr is None or arr.size != 1:
        return False
    return bool(np.isclose(float(arr.reshape(-1)[0]), expected, rtol=rtol, atol=0.0))


def require_scalar(result: pattern.MatchResult, value: ir.Value | None, expected: float,
                   what: str) -> pattern.MatchResult:
    """``result`` unchanged when ``value`` is the scalar constant ``expected``, else a failure."""
    if not is_scalar_close(value, expected):
        arr = const_array(value)
        got = "a non-constant" if arr is None else f"{arr.reshape(-1)[:4].tolist()}"
        return result.fail(f"{what}: expected constant {expected:g}, got {got}", value)
    return result


def weight_error(value: ir.Value | None, rank: int, what: str) -> str | None:
    """None when ``value`` is a constant of the given rank, else why not."""
    arr = const_array(value)
    if arr is None:
        return f"{what}: expected a constant initializer, got a computed tensor"
    if arr.ndim != rank:
        return f"{what}: expected rank {rank}, got shape {list(arr.shape)}"
    return None


def dtype_name(value: ir.Value) -> str:
    arr = const_array(value)
    return str(arr.dtype) if arr is not None else "unknown"


def node_names(*values: ir.Value | None) -> list[str]:
    """Names of the nodes producing the given values, in order, skipping None."""
    out = []
    for v in values:
        p = v.producer() if v is not None else None
        if p is not None and p.domain == CANON and "original_names" in p.attributes:
            out.extend(p.attributes["original_names"].value)  # the user's nodes it stands for
        elif p is not None:
            out.append(p.name or p.op_type)
    return out


_NORMS = {"LayerNormalization": 1, "SimplifiedLayerNormalization": 1,
          "SkipLayerNormalization": 2, "SkipSimplifiedLayerNormalization": 2,
          "RMSNormalization": 1}
_SAME_SHAPE = {"Relu", "Gelu", "Sigmoid", "Tanh", "Erf", "Neg", "Identity", "Cast", "Silu",
               "FastGelu", "BiasGelu", "QuickGelu"}


def last_dim(value: ir.Value | None, depth: int = 16) -> int | None:
    """The static size of a value's last axis, from its shape or, where shape inference
    stopped (e.g. after com.microsoft ops), from the normalization or op producing it."""
    if value is None or depth == 0:
        return None
    if value.shape is not None and value.shape.rank():
        last = value.shape[-1]
        if isinstance(last, int):
            return last
    node = value.producer()
    if node is None:
        return None
    if node.op_type in _NORMS and len(node.inputs) > _NORMS[node.op_type]:
        scale = const_array(node.inputs[_NORMS[node.op_type]])
        if scale is not None and scale.ndim >= 1:
            return int(scale.shape[-1])
    if node.op_type in _SAME_SHAPE:
        return last_dim(node.inputs[0], depth - 1)
    if node.op_type in ("Add", "Mul", "Sub", "Div"):
        dims = {d for d in (last_dim(i, depth - 1) for i in node.inputs) if d not in (None, 1)}
        return dims.pop() if len(dims) == 1 else None
    return None


def best_failure(model: ir.Model, rules, roots, default: str) -> str:
    """The reason of the best-scoring failed match of any of ``rules`` tried at ``roots``
    (onnxscript's MatchingTracer), or ``default`` where none got far enough to give one."""
    tracer = pattern.MatchingTracer()
    for rule in rules:
        for root in roots:
            rule.try_rewrite(model, model.graph, root, tracer=tracer)
    best, best_score = default, -1
    for infos in tracer.best_matches_map.values():
        for info in infos:
            reason = info.match_result.reason
            if reason and info.score() > best_score:
                best, best_score = reason, info.score()
    return best
