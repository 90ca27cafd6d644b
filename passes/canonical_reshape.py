"""Canonical reshapes: one form for an FFN however its exporter placed its reshapes.

A model may flatten the tokens ([B, S, H] → [B·S, H]) before a projection or after it, apply
its activation (or a comparison) before or after a ``Reshape``, and compute a reshape's
target at run time (``Shape → Gather → Concat``, ``Shape(start, end)``, ``Unsqueeze``)
instead of writing a constant. The rewrites here make these forms one:

* a reshape sinks below the elementwise op that reads it (unary, or binary with a constant
  that broadcasts alike on both sides, or with another reshape of a same-shaped tensor) and
  below a projection ``MatMul(·, W)`` by a constant 2-D weight where it keeps the last axis,
  is more than the insertion or removal of unit axes and reads another projection's output
  (an FFN's middle: the tokens flattened at a model's input stay so): ``act(Reshape(h)) →
  Reshape(act(h))``, ``Reshape(act(x · W1), [-1, F]) · W2 → Reshape(act(x · W1) · W2,
  [-1, H])``;
* ``Reshape(Reshape(x, s1), s2)`` becomes one reshape of x;
* a reshape whose output has its input's shape is dropped;
* a reshape target computed at run time becomes a constant where the symbolic shapes prove
  it (0 for an axis copied from the input, -1 for the one axis left);
* ``Flatten`` of the last axis is a ``Reshape(x, [-1, last])``; a two-operand ``Einsum``
  that is a plain product by a constant 2-D weight is a ``MatMul``; a ``Concat`` of
  constant weights is one initializer; a weight ``Expand``-ed over x's batch dims before a
  ``MatMul`` (``torch.bmm``) is the weight itself.

Every rewrite computes the same tensor for every input the original accepts (the reshapes'
-1 axis is the one exception: a tensor with no elements, where -1 cannot be inferred).
The rewrites decide on symbolic shapes (``symbolic_shapes.Shapes``, one for the whole
fixpoint: the values keep their shapes through every rewrite).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir

from ._common import CANON, const_array, const_shape, dequantized, initializer
from .symbolic_shapes import BINARY, ONE, UNARY, Mono, Shapes, const, encode, ints, ir_shape


class _Rewrite:
    """One rewrite at a node; ``apply`` returns whether it changed the graph."""

    name = ""

    def apply(self, graph: ir.Graph, node: ir.Node, shapes: Shapes, names: _Names) -> bool:
        raise NotImplementedError


class _Names:
    """Fresh value and node names, unique in the graph."""

    def __init__(self, graph: ir.Graph) -> None:
        self._used = {v.name for n in graph for v in n.outputs} | set(graph.initializers) | {
            v.name for v in graph.inputs}
        self._n = itertools.count()

    def __call__(self, base: str) -> str:
        while True:
            name = f"{base}__rs{next(self._n)}"
            if name not in self._used:
                self._used.add(name)
                return name


def _reshape(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Reshape" and node.domain == ""


def _shape_const(graph: ir.Graph, dims: list[int]) -> ir.Value:
    name = "fffc_shape_" + "_".join(str(d).replace("-", "m") for d in dims)
    return initializer(graph, name, np.array(dims, dtype=np.int64))


def _new_node(graph, names, op_type, inputs, like: ir.Node | None = None, domain="",
              attributes=(), out_like: ir.Value | None = None) -> ir.Node:
    base = (like.name if like is not None and like.name else op_type)
    node = ir.Node(domain, op_type, inputs, attributes=list(attributes), num_outputs=1,
                   name=names(base))
    node.outputs[0].name = names(base)
    if out_like is not None and out_like.type is not None:
        node.outputs[0].type = out_like.type
    return node


def _set_shape(v: ir.Value, shape: ir.Shape | None) -> None:
    """A new value's shape, where its type is known (a value_info needs both)."""
    if v.type is not None and shape is not None:
        v.shape = shape


def _is_output(graph: ir.Graph, v: ir.Value) -> bool:
    return v in graph.outputs


class ResolveComputedShape(_Rewrite):
    """``Reshape(x, Concat(Gather(Shape(x), 0), …))`` → ``Reshape(x, [0, …, -1])``; with
    ``copy_dims`` False only a target of constants and one computed entry, which becomes
    -1 (``Reshape(x, Concat(b·s, [k, p]))`` → ``Reshape(x, [-1, k, p])``)."""

    name = "ResolveComputedShape"

    def __init__(self, copy_dims: bool = True) -> None:
        self.copy_dims = copy_dims

    def apply(self, graph, node, shapes, names):
        if not _reshape(node) or ints(node.inputs[1]) is not None:
            return False
        target = shapes.values(node.inputs[1])
        if target is None:
            return False
        src = shapes.shape(node.inputs[0]) if self.copy_dims else None
        dims = encode(target, src, node.attributes.get_int("allowzero", 0))
        if dims is None:
            return False
        node.replace_input_with(1, _shape_const(graph, dims))
        return True


class MergeReshapes(_Rewrite):
    """``Reshape(Reshape(x, s1), s2)`` → ``Reshape(x, s2')``; a ``Squeeze`` or ``Unsqueeze``
    of a reshape is merged into it the same way."""

    name = "MergeReshapes"

    def apply(self, graph, node, shapes, names):
        if node.op_type in ("Squeeze", "Unsqueeze") and node.domain == "" and _reshape(
                node.inputs[0].producer()) and not _is_output(graph, node.outputs[0]):
            out = shapes.shape(node.outputs[0])
            dims = None if out is None else encode(out, shapes.shape(node.inputs[0]))
            if dims is None:
                return False
            new = _new_node(graph, names, "Reshape", [node.inputs[0], _shape_const(graph, dims)],
                            like=node, out_like=node.outputs[0])
            _set_shape(new.outputs[0], node.outputs[0].shape)
            graph.insert_before(node, new)
            ir.convenience.replace_all_uses_with(node.outputs[0], new.outputs[0])
            return True
        inner = node.inputs[0].producer() if _reshape(node) else None
        if not _reshape(inner):
            return False
        x = inner.inputs[0]
        s2 = ints(node.inputs[1])
        allowzero = node.attributes.get_int("allowzero", 0)
        if s2 is not None and (allowzero or 0 not in s2):
            dims = s2  # no axis copied from the input: the target holds for any input
        else:
            out = shapes.shape(node.outputs[0])
            dims = None if out is None else encode(out, shapes.shape(x), allowzero)
        if dims is None:
            return False
        node.replace_input_with(0, x)
        node.replace_input_with(1, _shape_const(graph, dims))
        return True


class DropIdentityReshape(_Rewrite):
    """``Reshape(x, s)`` whose output has x's shape → x."""

    name = "DropIdentityReshape"

    def apply(self, graph, node, shapes, names):
        if not _reshape(node) or _is_output(graph, node.outputs[0]):
            return False
        a, b = shapes.shape(node.inputs[0]), shapes.shape(node.outputs[0])
        if a is None or a != b:
            return False
        ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
        return True


class FlattenLastAxis(_Rewrite):
    """``Flatten(x [.., n], axis = rank-1)`` → ``Reshape(x, [-1, n])``."""

    name = "FlattenLastAxis"

    def apply(self, graph, node, shapes, names):
        if node.op_type != "Flatten" or node.domain != "":
            return False
        s = shapes.shape(node.inputs[0])
        axis = node.attributes.get_int("axis", 1)
        if s is None or len(s) < 2 or axis not in (len(s) - 1, -1) or const(s[-1]) is None:
            return False
        new = _new_node(graph, names, "Reshape",
                        [node.inputs[0], _shape_const(graph, [-1, const(s[-1])])],
                        like=node, out_like=node.outputs[0])
        graph.insert_before(node, new)
        _set_shape(new.outputs[0], node.outputs[0].shape)
        ir.convenience.replace_all_uses_with(node.outputs[0], new.outputs[0],
                                             replace_graph_outputs=False)
        return not node.outputs[0].uses()


def _unit_axes_only(a: list[Mono], b: list[Mono]) -> bool:
    """b is a with unit axes inserted or removed (a Squeeze or Unsqueeze)."""
    return [m for m in a if m != ONE] == [m for m in b if m != ONE]


def _projection(node: ir.Node) -> bool:
    return node.op_type in ("MatMul", "Gemm") and node.domain == "" and len(node.inputs) > 1 \
        and const_shape(node.inputs[1]) is not None


def _after_projection(v: ir.Value, depth: int = 8) -> bool:
    """v is computed from a projection by a constant weight through elementwise ops: a
    reshape of v sits between two projections (an FFN's middle), not at a model's input."""
    frontier = [v]
    for _ in range(depth):
        nxt = []
        for u in frontier:
            p = u.producer() if u is not None else None
            if p is None or p.domain not in ("", CANON):
                continue
            if _projection(p):
                return True
            if p.op_type in UNARY or p.op_type in BINARY or p.op_type in ("Split", "Slice"):
                nxt.extend(i for i in p.inputs[:2] if i is not None and const_array(i) is None)
        frontier = nxt
    return False


class SinkReshape(_Rewrite):
    """Moves ``Reshape(a, s)`` below the elementwise ops and projections that read it."""

    name = "SinkReshape"

    def apply(self, graph, node, shapes, names):
        if not _reshape(node):
            return False
        v, a = node.outputs[0], node.inputs[0]
        sa, sv = shapes.shape(a), shapes.shape(v)
        if sa is None or sv is None:
            return False
        changed = False
        for use in list(v.uses()):
            c = use.node
            if c.graph is not graph or any(_is_output(graph, o) for o in c.outputs):
                continue
            new_inputs = self._inputs(c, use.idx, a, sa, sv, shapes)
            if new_inputs is None:
                continue
            target = self._target(c, new_inputs, shapes, node)
            if target is None:
                continue
            op = _new_node(graph, names, c.op_type, new_inputs, like=c, domain=c.domain,
                           attributes=[attr for attr in c.attributes.values()],
                           out_like=c.outputs[0])
            rs = _new_node(graph, names, "Reshape", [op.outputs[0], target], like=node,
                           attributes=[attr for attr in node.attributes.values()],
                           out_like=c.outputs[0])
            _set_shape(rs.outputs[0], c.outputs[0].shape)
            _set_shape(op.outputs[0], ir_shape(shapes.shape(op.outputs[0])))
            graph.insert_before(c, [op, rs])
            ir.convenience.replace_all_uses_with(c.outputs[0], rs.outputs[0])
            graph.remove(c, safe=True)
            changed = True
        return changed

    @staticmethod
    def _inputs(c: ir.Node, idx: int, a, sa, sv, shapes: Shapes) -> list[ir.Value] | None:
        """c's inputs with the reshaped operand read before the reshape, or None where c
        does not commute with the reshape."""
        if c.domain not in ("", CANON) or len(c.outputs) != 1:
            return None
        if c.op_type in UNARY and idx == 0 and all(i is None for i in c.inputs[1:]):
            return [a]
        if c.op_type in BINARY and len(c.inputs) == 2 and c.domain == "":
            other = c.inputs[1 - idx]
            ins = list(c.inputs)
            ins[idx] = a
            arr = const_array(other)
            if arr is not None:
                if arr.ndim > min(len(sa), len(sv)) or any(d != 1 for d in arr.shape[:-1]):
                    return None
                if arr.size == 1 or (sa[-1] == sv[-1] and const(sa[-1]) == arr.shape[-1]):
                    return ins
                return None
            q = other.producer()
            if _reshape(q) and shapes.shape(q.inputs[0]) == sa and shapes.shape(other) == sv:
                ins[1 - idx] = q.inputs[0]
                return ins
            return None
        if c.op_type == "MatMul" and c.domain == "" and idx == 0:
            w = const_shape(c.inputs[1])
            if w is None or len(w) != 2 or len(sa) < 2 or len(sv) < 2 or sa[-1] != sv[-1] \
                    or _unit_axes_only(sa, sv) or not _after_projection(a):
                return None
            return [a, c.inputs[1]]
        return None

    @staticmethod
    def _target(c: ir.Node, new_inputs, shapes: Shapes, node: ir.Node) -> ir.Value | None:
        """The reshape target after c (the reshape's own unless c changed the last axis)."""
        if c.op_type != "MatMul":
            return node.inputs[1]
        n = const_shape(c.inputs[1])[1]
        src = shapes.shape(new_inputs[0])
        out = shapes.shape(node.outputs[0])
        dims = encode([*out[:-1], (n, ())], [*src[:-1], (n, ())],
                      node.attributes.get_int("allowzero", 0))
        return None if dims is None else _shape_const(c.graph, dims)


def _einsum_matmul(eq: str) -> tuple[int, bool] | None:
    """(index of the data operand, whether the weight is [out, in]) of a two-operand einsum
    equation that is ``x[..., c] · W[c, o] → [..., o]``; None for any other."""
    eq = eq.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2:
        return None
    for i in (0, 1):
        x, w = ops[i], ops[1 - i]
        if len(w) != 2 or "." in w or w[0] == w[1]:
            continue
        labels = x.replace("...", "")
        if len(set(labels)) != len(labels) or not labels:
            continue
        c = labels[-1]
        if c not in w or not x.endswith(c):
            continue
        o = w[1] if w[0] == c else w[0]
        if o in labels or out != x[:-1] + o:
            continue
        return i, w[0] != c
    return None


class EinsumMatMul(_Rewrite):
    """``Einsum("bsh,hf->bsf", x, W)`` (any labels; W either way round) → ``MatMul(x, W)``."""

    name = "EinsumMatMul"

    def apply(self, graph, node, shapes, names):
        if node.op_type != "Einsum" or node.domain != "" or len(node.inputs) != 2:
            return False
        form = _einsum_matmul(node.attributes.get_string("equation", ""))
        if form is None:
            return False
        i, transposed = form
        w = node.inputs[1 - i]
        arr = const_array(w) if not dequantized(w.producer()) else None
        if arr is None or arr.ndim != 2:
            return False
        if transposed:
            w = initializer(graph, f"{w.name}__T_{node.name or 'einsum'}",
                            np.ascontiguousarray(arr.T))
        mm = _new_node(graph, names, "MatMul", [node.inputs[i], w], like=node,
                       out_like=node.outputs[0])
        _set_shape(mm.outputs[0], node.outputs[0].shape)
        graph.insert_before(node, mm)
        ir.convenience.replace_all_uses_with(node.outputs[0], mm.outputs[0],
                                             replace_graph_outputs=False)
        return not node.outputs[0].uses()


def _unsqueezed_const(v: ir.Value) -> np.ndarray | None:
    """The float constant behind v, or behind ``Unsqueeze(W, axes)`` of one (dynamo writes
    ``W.unsqueeze(0)`` as a node where W is above the constant folder's size limit)."""
    p = v.producer()
    if dequantized(p):
        return None
    if p is not None and p.op_type == "Unsqueeze" and p.domain == "" and len(p.inputs) == 2:
        w, axes = const_array(p.inputs[0]), ints(p.inputs[1])
        if w is None or axes is None or dequantized(p.inputs[0].producer()):
            return None
        rank = w.ndim + len(axes)
        return np.expand_dims(w, tuple(a % rank for a in axes))
    w = const_array(v)
    return w if w is not None and w.dtype.kind == "f" else None


class ExpandedWeight(_Rewrite):
    """``MatMul(x, Expand(W, [B, .., k, n]))`` → ``MatMul(x, W [k, n])`` where W's leading
    dims are 1 and the expanded batch dims are x's (or 1): ``torch.bmm(x, W.expand(B, k,
    n))``; broadcasting gives the same product."""

    name = "ExpandedWeight"

    def apply(self, graph, node, shapes, names):
        if node.op_type != "MatMul" or node.domain != "":
            return False
        e = node.inputs[1].producer()
        if e is None or e.op_type != "Expand" or e.domain != "":
            return False
        w = _unsqueezed_const(e.inputs[0])
        sx, target = shapes.shape(node.inputs[0]), shapes.values(e.inputs[1])
        if w is None or w.ndim < 2 or any(d != 1 for d in w.shape[:-2]) or sx is None \
                or target is None:
            return False
        out = shapes.broadcast([(int(d), ()) for d in w.shape], target)
        if out is None or len(out) > len(sx) or out[-2:] != [(int(d), ()) for d in w.shape[-2:]]:
            return False
        batch = out[:-2]
        if any(m != ONE and m != sx[len(sx) - 2 - len(batch) + i] for i, m in enumerate(batch)):
            return False
        node.replace_input_with(1, initializer(
            graph, f"{e.inputs[0].name}__2d", w.reshape(w.shape[-2:])))
        return True


class ConcatWeights(_Rewrite):
    """``Concat`` of constant float weights (a packed projection written ``torch.cat([Wg,
    Wu])``) → one initializer, whatever its size (constant folding stops at a size limit)."""

    name = "ConcatWeights"

    def apply(self, graph, node, shapes, names):
        if node.op_type != "Concat" or node.domain != "" or len(node.inputs) < 2:
            return False
        arrs = [const_array(v) if v is not None and not dequantized(v.producer()) else None
                for v in node.inputs]
        if any(a is None or a.dtype.kind != "f" for a in arrs):
            return False
        w = np.concatenate(arrs, axis=node.attributes.get_int("axis", 0))
        value = initializer(graph, f"{node.outputs[0].name}__folded", w)
        ir.convenience.replace_all_uses_with(node.outputs[0], value)
        return True


class ReshapeRules:
    """The rewrites, applied node by node (in graph order) to a fixpoint; the family's
    ``rules`` (``apply_to_model`` returns the number of rewrites)."""

    def __init__(self, rules: list[_Rewrite], max_sweeps: int = 16):
        self.rules, self._sweeps = rules, max_sweeps

    def apply_to_model(self, model: ir.Model) -> int:
        graph, shapes = model.graph, Shapes()
        names = _Names(graph)
        count = 0
        for _ in range(self._sweeps):
            changed = 0
            for node in list(graph):
                if node.graph is not graph or not any(
                        o.uses() or o in graph.outputs for o in node.outputs):
                    continue  # removed, or left unused, by an earlier rewrite
                for rule in self.rules:
                    if rule.apply(graph, node, shapes, names):
                        changed += 1
                        break
            count += changed
            if not changed:
                break
        return count


rules = ReshapeRules([ConcatWeights(), ExpandedWeight(), EinsumMatMul(), FlattenLastAxis(), ResolveComputedShape(),
                      MergeReshapes(), DropIdentityReshape(), SinkReshape()])
# the computed reshape targets of one computed entry (the rows), proven before the families
# that match constant targets (the structured projections) and before ``rules`` moves any
# reshape
computed_shape_rules = ReshapeRules([ResolveComputedShape(copy_dims=False)])
