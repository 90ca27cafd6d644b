"""Finds Mixture-of-Depths routing around an FFN after FFN detection: the static top-k
form (``TopKRouting``), the causal decode form (``ThresholdRouting``) and the masked form
(``MaskedRouting``). The top-k form, from the combine back (Raposo et al. 2024; the public
implementations' export)::

    s   = Squeeze(MatMul(X, w_r [d, 1]) (+ b_r))        router score per token [B, S]
    i   = TopK(s | Sigmoid(s), k, axis 1, largest).indices
    j   = TopK(i, ·, largest=0).values  (sorted back to causal order; optional)
    e   = Expand(Unsqueeze(j, -1), [.., .., d])
    Δ   = FFN(GatherElements(X, e, axis 1))            an FFN marker (dense)
    w   = Unsqueeze(GatherElements(s | Sigmoid(s), j, axis 1), -1)
    Y   = ScatterElements(X, e, U, axis 1, reduction add | none)

where the update U is any sum of ``x_sel = GatherElements(X, e)`` and ``Δ`` terms, each
optionally times ``w`` or a constant: fffc does not assume one combine formula. It reads
the coefficients off the graph — selected tokens get ``(a + b·w)·x + (c + d·w)·Δ`` — and
the compile step proves the reading numerically (reference vs the original region on
probe inputs) before anything is rewritten; the region is kept in the marker's
``original`` graph so an unproven site goes back exactly as it was. The causal form selects
with ``Greater(Sigmoid(a), 0.5) → NonZero → GatherND`` and writes with ``ScatterND``; the
masked form (Router-Tuning) runs the FFN on every token and keeps ``x + mask·update``. In
each, the routed FFN may read ``LayerNormalization(x_sel)`` (a pre-norm block). A combine
read off the graph is no fixed pattern graph, so each form is a ``RegionRule``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from fffc.contract.kinds import SiteKind
from fffc.contract.ops import ROUTED_FFN
from fffc.contract.sites import Site

from ._common import CANON, const_array, initializer
from ._region import MatchFailure, RegionRule, RegionRuleSet
from .markers import RoutedMarker, decode, kind_of, marker_inputs
from .symbolic_shapes import Shapes, drops_last_unit_axis

Affine = tuple[tuple[float, float], tuple[float, float]]  # (x coef, Δ coef), each (a, b): a + b·w


@dataclass(frozen=True)
class Routed:
    """What a MoD region computes: the routed tensor, the router, the selection, the combine
    and the FFN (with its pre-norm) run on the selected tokens."""

    x: ir.Value
    w_r: ir.Value  # router weight [d, 1]
    b_r: ir.Value | None  # router bias (one element)
    k: int  # top-k: a constant k (0: computed from the sequence length, ``capacity``)
    router: str  # "raw" | "sigmoid": the weight the combine scales by
    x_coef: tuple[float, float]
    delta_coef: tuple[float, float]
    ln: tuple | None  # (scale, bias | None, epsilon) of the pre-norm
    w1: ir.Value
    b1: ir.Value | None
    w2: ir.Value
    b2: ir.Value | None
    activation: str
    capacity: dict | None = None
    selection: str = "topk"  # "topk" | "threshold" (causal)
    w_a: ir.Value | None = None  # threshold: the selection score's weight [d, 1]
    b_a: ir.Value | None = None  # its bias
    b_a_value: float | None = None  # masked form: the selection bias, threshold folded in


def _strip(value: ir.Value | None, ops: tuple[str, ...] = ("Cast", "Identity")) -> ir.Value | None:
    while value is not None and value.producer() is not None and \
            value.producer().op_type in ops and value.producer().domain == "":
        value = value.producer().inputs[0]
    return value


def _node(value: ir.Value | None, op_type: str, what: str) -> ir.Node:
    value = _strip(value)
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain not in ("", CANON):
        got = "a graph input" if node is None else node.op_type
        raise MatchFailure(f"{what}: expected {op_type}, got {got}")
    return node


def _same_source(a: ir.Value, b: ir.Value) -> bool:
    """The same tensor, up to Slice(v, 0, Shape(v))-style copies (TorchScript's x[:])."""
    def root(v: ir.Value) -> ir.Value:
        v = _strip(v)
        p = v.producer() if v is not None else None
        if p is not None and p.op_type == "Slice" and p.domain == "":
            starts = const_array(p.inputs[1])
            if starts is not None and not starts.any():
                return root(p.inputs[0])
        return v
    return root(a) is root(b)


def _axis(node: ir.Node, want: int, rank: int = 3) -> bool:
    axis = node.attributes.get_int("axis", 0)
    return axis == want or axis == want - rank


def _unsqueezed(value: ir.Value, what: str) -> ir.Value:
    """v of ``Unsqueeze(v, [-1])`` (axes as input or attribute)."""
    node = _node(value, "Unsqueeze", what)
    axes = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if axes is None:
        axes = node.attributes.get_ints("axes", None)
    if axes is None or list(axes) not in ([-1], [2]):
        raise MatchFailure(f"{what}: expected Unsqueeze on the last axis, got axes {axes}")
    return node.inputs[0]


def _router(value: ir.Value, unit_axis: bool = False) -> dict:
    """The router score behind a TopK/GatherElements input: (x, w_r, b_r, sigmoid?). Its
    unit axis is dropped by a ``Squeeze`` or a ``Reshape`` to the other dims, or, with
    ``unit_axis`` (a mask broadcast over the features), kept."""
    v = _strip(value)
    sigmoid = v.producer() is not None and v.producer().op_type == "Sigmoid"
    if sigmoid:
        v = v.producer().inputs[0]
    v = _strip(v)
    p = v.producer() if v is not None else None
    if p is not None and p.domain == "" and (
            p.op_type == "Squeeze" or drops_last_unit_axis(p)):
        inner = p.inputs[0]
    elif unit_axis and p is not None and p.op_type in ("MatMul", "Add") and p.domain == "":
        inner = v
    else:
        got = "a graph input" if p is None else p.op_type
        raise MatchFailure(f"router score: expected Squeeze (or a Reshape dropping the unit "
                           f"axis), got {got}")
    bias = None
    if inner.producer() is not None and inner.producer().op_type == "Add":
        add = inner.producer()
        for a, b in (add.inputs, add.inputs[::-1]):
            if const_array(b) is not None and const_array(b).size == 1:
                inner, bias = a, b
                break
    mm = _node(inner, "MatMul", "router projection")
    w = const_array(mm.inputs[1])
    if w is None or w.ndim != 2 or w.shape[1] != 1:
        raise MatchFailure("router projection: expected a constant [d, 1] weight")
    return {"x": mm.inputs[0], "w_r": mm.inputs[1], "b_r": bias, "sigmoid": sigmoid,
            "score": _strip(value)}


def _affine(value: ir.Value, x_sel, delta: ir.Value, w_sel: ir.Value | None,
            depth: int = 8) -> Affine:
    """Coefficients of ``value`` = (a + b·w)·x_sel + (c + d·w)·Δ, from Add/Sub/Mul nodes;
    ``x_sel(v)`` tells whether v is the selected tokens gathered from X."""
    if depth == 0:
        raise MatchFailure("combine: expression too deep")
    if value is delta:
        return (0.0, 0.0), (1.0, 0.0)
    if x_sel(value):
        return (1.0, 0.0), (0.0, 0.0)
    node = value.producer()
    if node is None or node.domain != "" or node.op_type not in ("Add", "Sub", "Mul"):
        raise MatchFailure(f"combine: {node.op_type if node else 'an input'} is not an Add/Sub/Mul "
                           "of the selected tokens, the FFN output and the router weight")
    a, b = node.inputs
    if node.op_type in ("Add", "Sub"):
        (xa, da), (xb, db) = (_affine(a, x_sel, delta, w_sel, depth - 1),
                              _affine(b, x_sel, delta, w_sel, depth - 1))
        sign = 1.0 if node.op_type == "Add" else -1.0
        return ((xa[0] + sign * xb[0], xa[1] + sign * xb[1]),
                (da[0] + sign * db[0], da[1] + sign * db[1]))
    for term, factor in ((a, b), (b, a)):
        c = const_array(factor)
        if c is not None and c.size == 1:
            (x0, x1), (d0, d1) = _affine(term, x_sel, delta, w_sel, depth - 1)
            k = float(c.reshape(-1)[0])
            return (k * x0, k * x1), (k * d0, k * d1)
        if w_sel is not None and factor is w_sel:
            (x0, x1), (d0, d1) = _affine(term, x_sel, delta, w_sel, depth - 1)
            if x1 or d1:
                raise MatchFailure("combine: the router weight enters twice (w² terms)")
            return (0.0, x0), (0.0, d0)
    raise MatchFailure("combine: a product of two computed tensors other than the router weight")


def _dense_ffn(value: ir.Value) -> ir.Node:
    """The FFN marker feeding a combine's update (a dense FFN: the one kind routed yet)."""
    ffn = next((n for n in _walk(value) if n.op_type == "FFN" and n.domain == CANON), None)
    if ffn is None:
        raise MatchFailure("routed block: no FFN found between the routed tokens and the "
                           "combine")
    kind = kind_of(ffn)
    if kind is not SiteKind.DENSE:
        raise MatchFailure(f"routed block: a {kind} FFN (only dense FFNs are supported inside "
                           "MoD yet)", ffn)
    return ffn


def _ffn_fields(ffn: ir.Node) -> dict:
    """The marker's FFN weights and activation, as the match results carry them."""
    m = decode(ffn)
    return {"w1": m.inputs["W1"], "b1": m.inputs["B1"], "w2": m.inputs["W2"],
            "b2": m.inputs["B2"], "activation": m.activation}


def _flattened(ffn: ir.Node) -> tuple[ir.Value, ir.Value]:
    """(what the FFN is applied to, its result): the marker's own input and output, or
    ``Reshape(FFN(Reshape(t, [-1, d])), t's shape)``'s t and result (a token-wise FFN on the
    tokens flattened is the FFN of t)."""
    x, y = ffn.inputs[0], ffn.outputs[0]
    r_in = x.producer()
    uses = y.uses()
    r_out = uses[0].node if len(uses) == 1 else None
    if r_in is None or r_out is None or not all(
            r is not None and r.op_type == "Reshape" and r.domain == "" for r in (r_in, r_out)):
        return x, y
    shapes = Shapes()
    t, flat, out = (shapes.shape(v) for v in (r_in.inputs[0], x, r_out.outputs[0]))
    if t and flat and t == out and len(flat) == 2 and flat[-1] == t[-1]:
        return r_in.inputs[0], r_out.outputs[0]
    return x, y


def _ffn_input(ffn: ir.Node, gathered, what: str) -> tuple | None:
    """The routed FFN reads the selected tokens: directly (None), or through a pre-norm
    ``LayerNormalization(x_sel, scale, bias)`` over the last axis ((scale, bias, epsilon))."""
    v = _flattened(ffn)[0]
    if gathered(v):
        return None
    ln = v.producer()
    if ln is None or ln.op_type != "LayerNormalization" or ln.domain != "":
        raise MatchFailure(f"FFN input: expected {what} (or a LayerNormalization of them)")
    if not gathered(ln.inputs[0]):
        raise MatchFailure(f"FFN input: the LayerNormalization does not read {what}")
    if ln.attributes.get_int("axis", -1) not in (-1, 2):
        raise MatchFailure("pre-norm: expected LayerNormalization over the last axis")
    scale = ln.inputs[1]
    bias = ln.inputs[2] if len(ln.inputs) > 2 else None
    if const_array(scale) is None or (bias is not None and const_array(bias) is None):
        raise MatchFailure("pre-norm: expected a constant LayerNormalization scale and bias")
    return scale, bias, ln.attributes.get_float("epsilon", 1e-5)


def _read_topk(root: ir.Node) -> Routed:
    """Read a MoD region off its ScatterElements."""
    if root.op_type != "ScatterElements" or not _axis(root, 1):
        raise MatchFailure("expected ScatterElements on axis 1 (the sequence)")
    reduction = root.attributes.get_string("reduction", "none")
    if reduction not in ("add", "none"):
        raise MatchFailure(f"ScatterElements reduction {reduction!r}: expected add or none")
    data, indices, updates = root.inputs
    crop = updates.producer()
    if crop is not None and crop.op_type == "Slice" and crop.domain == "":
        # TorchScript's scatter_add crops the source to the index shape: Slice(u, 0, Shape(e))
        starts, ends = const_array(crop.inputs[1]), crop.inputs[2].producer()
        if (starts is not None and not starts.any() and ends is not None
                and ends.op_type == "Shape" and _strip(ends.inputs[0]) is _strip(indices)):
            updates = crop.inputs[0]
    expand = _node(indices, "Expand", "scatter indices")
    sorted_idx = _strip(_unsqueezed(expand.inputs[0], "scatter indices"))
    topk = sorted_idx.producer()
    if topk is not None and topk.op_type == "TopK" and topk.outputs[0] is sorted_idx:
        if topk.attributes.get_int("largest", 1) != 0:
            raise MatchFailure("index sort: expected TopK(largest=0) over the selected indices")
        chosen = _strip(topk.inputs[0])
    else:
        chosen = sorted_idx
    router_topk = chosen.producer()
    if router_topk is None or router_topk.op_type != "TopK" or router_topk.outputs[1] is not chosen:
        raise MatchFailure("selection: expected the indices of a TopK over the router scores")
    if router_topk.attributes.get_int("largest", 1) != 1 or not _axis(router_topk, 1, 2):
        raise MatchFailure("selection: expected TopK(largest=1) over the sequence axis")
    k = const_array(router_topk.inputs[1])
    capacity = None
    if k is None:
        capacity = _capacity(router_topk.inputs[1], data)
    elif k.size != 1:
        raise MatchFailure(f"capacity: TopK's k has {k.size} elements")
    ranked = _router(router_topk.inputs[0])
    if not _same_source(ranked["x"], data):
        raise MatchFailure("router: scores are not computed from the scattered tensor")

    def gathered(v: ir.Value) -> bool:
        """v = GatherElements(X, Expand(Unsqueeze(the selected indices)), axis 1)."""
        g = _strip(v).producer() if _strip(v) is not None else None
        if g is None or g.op_type != "GatherElements" or not _axis(g, 1):
            return False
        if not _same_source(g.inputs[0], data):
            return False
        try:
            e = _node(g.inputs[1], "Expand", "gather indices")
            return _strip(_unsqueezed(e.inputs[0], "gather indices")) is sorted_idx
        except MatchFailure:
            return False

    ffn = _dense_ffn(updates)
    ln = _ffn_input(ffn, gathered, "the selected tokens gathered from the scattered tensor")
    w_sel = None
    sigmoid = False
    for node in _walk(updates):
        if node.op_type == "Unsqueeze" and node.domain == "":
            g = _strip(node.inputs[0]).producer()
            if g is not None and g.op_type == "GatherElements" and \
                    _strip(g.inputs[1]) is sorted_idx:
                weight = _router(g.inputs[0])
                if weight["score"] is not ranked["score"] and not (
                        weight["x"] is ranked["x"] and weight["w_r"] is ranked["w_r"]):
                    raise MatchFailure("router weight: not the score the tokens were selected by")
                w_sel = node.outputs[0]
                sigmoid = weight["sigmoid"]
    (xa, xb), (da, db) = _affine(updates, gathered, _flattened(ffn)[1], w_sel)
    if reduction == "add":
        xa += 1.0
    if w_sel is None and (xb or db):
        raise MatchFailure("combine: router weight term without a router weight")
    return Routed(
        x=data, w_r=ranked["w_r"], b_r=ranked["b_r"],
        k=0 if k is None else int(k.reshape(-1)[0]), capacity=capacity,
        router="sigmoid" if sigmoid else "raw", x_coef=(xa, xb), delta_coef=(da, db),
        ln=ln, **_ffn_fields(ffn),
    )


_SHAPE_ONLY = ("Reshape", "Squeeze", "Unsqueeze", "Identity")
_INTS = (ir.DataType.INT64, ir.DataType.INT32)


def _cast_to(node: ir.Node | None, types: tuple) -> bool:
    return (node is not None and node.op_type == "Cast" and node.domain == ""
            and node.attributes.get_int("to", 0) in [int(t) for t in types])


def _through(value: ir.Value, ops: tuple[str, ...] = _SHAPE_ONLY,
             int_casts: bool = False) -> tuple[ir.Value, ir.Node | None]:
    """(value, producer) past shape-only wrappers (and casts to an integer type)."""
    while (p := value.producer()) is not None and p.domain == "" and (
            p.op_type in ops or (int_casts and _cast_to(p, _INTS))):
        value = p.inputs[0]
    return value, value.producer()


def _const_scalar(node: ir.Node, what: str) -> tuple[ir.Value, np.ndarray]:
    """(the other input, the constant) of a binary node with one one-element constant."""
    for i in (1, 0):
        c = const_array(node.inputs[i])
        if c is not None and c.size == 1:
            return node.inputs[1 - i], c.reshape(-1)
    raise MatchFailure(f"capacity: {what} without a constant operand")


def _capacity(value: ir.Value, data: ir.Value) -> dict:
    """How TopK's k is computed from the sequence length S of ``data`` [B, S, d] (an export
    with a dynamic sequence axis): ``[Max(·, m)]`` of ``Cast<int>([Ceil|Floor](Mul(
    Cast<float>(S), c)))`` (Python's ``max(m, int(c·S))``) or the integer ``S // q``. Exactly
    these forms: anything else computes another k and is refused."""
    cap = {"scale": 0.0, "divisor": 0, "round": "trunc", "min": 0}
    v, node = _through(value)
    to_int = seen_max = False
    while node is not None:
        if _cast_to(node, _INTS):
            to_int = True
            v, node = _through(node.inputs[0])
        elif node.op_type == "Max" and node.domain == "" and len(node.inputs) == 2 \
                and not seen_max:
            v, m = _const_scalar(node, "Max")
            cap["min"], seen_max = int(m[0]), True
            v, node = _through(v)
        else:
            break
    if node is not None and node.op_type in ("Ceil", "Floor") and node.domain == "" and to_int:
        cap["round"] = node.op_type.lower()
        v, node = _through(node.inputs[0])
    if node is not None and node.op_type == "Mul" and node.domain == "" and to_int:
        v, c = _const_scalar(node, "Mul")
        if c.dtype.kind != "f" or not float(c[0]) > 0:
            raise MatchFailure(f"capacity: k = S·{c[0]} (a positive float factor expected)")
        cap["scale"] = float(np.float32(c[0]))
        v, cast = _through(v)
        if not _cast_to(cast, (ir.DataType.FLOAT,)):
            raise MatchFailure("capacity: k = S·c with S not cast to float32")
        v = cast.inputs[0]
    elif node is not None and node.op_type == "Div" and node.domain == "":
        v, q = _const_scalar(node, "Div")
        if q.dtype.kind not in "iu" or int(q[0]) < 1:
            raise MatchFailure(f"capacity: k = S / {q[0]} (an integer division by a positive "
                               "integer expected)")
        cap["divisor"] = int(q[0])
    else:
        got = "a graph input" if node is None else node.op_type
        raise MatchFailure(f"capacity: TopK's k is computed by {got} (supported: a constant, "
                           "max(m, int(c·S)) with floor/ceil, S // q)")
    _sequence_length(v, data)
    return cap


def _sequence_length(value: ir.Value, data: ir.Value) -> None:
    """``value`` is S of ``data`` [B, S, d]: ``Gather(Shape(data), 1)`` or ``Shape(data,
    start=1, end=2)`` (through shape-only wrappers and integer casts)."""
    _, node = _through(value, int_casts=True)
    if node is not None and node.op_type == "Gather" and node.domain == "":
        i = const_array(node.inputs[1])
        shape = node.inputs[0].producer()
        if (i is not None and i.size == 1 and int(i.reshape(-1)[0]) in (1, -2)
                and node.attributes.get_int("axis", 0) == 0 and shape is not None
                and shape.op_type == "Shape" and shape.attributes.get_int("start", 0) == 0
                and shape.attributes.get_int("end", None) is None
                and _same_source(shape.inputs[0], data)):
            return
    if node is not None and node.op_type == "Shape" and node.domain == "" and \
            _same_source(node.inputs[0], data):
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", None)
        if start in (1, -2) and end in (2, -1):
            return
    raise MatchFailure("capacity: k is not computed from the sequence length of the routed tensor")


def _capacity_attrs(cap: dict | None) -> list[ir.Attr]:
    """RoutedFFN's k_* attributes of a k computed from the sequence length (none: constant)."""
    if not cap:
        return []
    return [ir.AttrFloat32("k_scale", cap["scale"]), ir.AttrInt64("k_divisor", cap["divisor"]),
            ir.AttrString("k_round", cap["round"]), ir.AttrInt64("k_min", cap["min"])]


def _nonzero_mask(value: ir.Value, what: str) -> ir.Value:
    """m of ``Transpose(NonZero(Expand?(Unsqueeze?(m))))``: the boolean mask behind indices."""
    t = _node(value, "Transpose", what)
    nz = _node(t.inputs[0], "NonZero", what)
    return _strip(nz.inputs[0], ("Cast", "Identity", "Expand", "Unsqueeze"))


def _selection_score(mask: ir.Value) -> dict:
    """The score a causal mask thresholds: ``Greater(Sigmoid(a), 0.5)`` or ``Greater(a, 0)``."""
    g = _node(mask, "Greater", "selection")
    a, c = g.inputs
    c = const_array(c)
    sigmoid = a.producer() is not None and a.producer().op_type == "Sigmoid"
    want = 0.5 if sigmoid else 0.0
    if c is None or c.size != 1 or float(c.reshape(-1)[0]) != want:
        raise MatchFailure(f"selection: expected {'Sigmoid(a) > 0.5' if sigmoid else 'a > 0'}")
    return _router(a)


def _read_threshold(root: ir.Node) -> Routed:
    """Read a causal (decode) MoD region off its ScatterND.

    ``Greater(Sigmoid(a), 0.5) → NonZero → GatherND(X) → FFN → combine → ScatterND(X)``, the
    scatter's indices from the same mask (per token, or expanded per element with the
    update flattened), the router weight ``X_sel·w_r`` on the gathered tokens (optional).
    """
    if root.op_type != "ScatterND":
        raise MatchFailure("expected ScatterND")
    reduction = root.attributes.get_string("reduction", "none")
    if reduction not in ("add", "none"):
        raise MatchFailure(f"ScatterND reduction {reduction!r}: expected add or none")
    data, indices, updates = root.inputs
    mask = _nonzero_mask(indices, "scatter indices")
    selected = _selection_score(mask)
    if not _same_source(selected["x"], data):
        raise MatchFailure("selection: the score is not computed from the scattered tensor")

    def gathered(v: ir.Value) -> bool:
        g = _strip(v).producer() if _strip(v) is not None else None
        if g is None or g.op_type != "GatherND" or not _same_source(g.inputs[0], data):
            return False
        try:
            return _nonzero_mask(g.inputs[1], "gather indices") is mask
        except MatchFailure:
            return False

    u = _strip(updates, ("Cast", "Identity", "Reshape", "Slice", "Expand"))
    ffn = _dense_ffn(u)
    ln = _ffn_input(ffn, gathered, "the masked tokens gathered from the scattered tensor")
    weight = None
    for node in _walk(u):
        if node.op_type == "MatMul" and node.domain == "" and gathered(node.inputs[0]):
            w = const_array(node.inputs[1])
            if w is not None and w.ndim == 2 and w.shape[1] == 1:
                weight = node
    w_sel, router = None, {"w_r": selected["w_r"], "b_r": selected["b_r"], "sigmoid": False}
    if weight is not None:
        w_sel = weight.outputs[0]
        router = {"w_r": weight.inputs[1], "b_r": None, "sigmoid": False}
        for use, _ in w_sel.uses():
            if use.op_type == "Add" and any(const_array(v) is not None and
                                            const_array(v).size == 1 for v in use.inputs):
                router["b_r"] = next(v for v in use.inputs if const_array(v) is not None)
                w_sel = use.outputs[0]
                break
        for use, _ in w_sel.uses():
            if use.op_type == "Sigmoid":
                router["sigmoid"], w_sel = True, use.outputs[0]
                break
    (xa, xb), (da, db) = _affine(u, gathered, _flattened(ffn)[1], w_sel)
    if reduction == "add":
        xa += 1.0
    return Routed(
        x=data, w_r=router["w_r"], b_r=router["b_r"], k=0,
        router="sigmoid" if router["sigmoid"] else "raw", x_coef=(xa, xb),
        delta_coef=(da, db), selection="threshold", w_a=selected["w_r"],
        b_a=selected["b_r"], ln=ln, **_ffn_fields(ffn),
    )


def _masked_selection(mask: ir.Value) -> tuple[dict, float]:
    """(score, t) of a 0/1 routing mask ``score > t``: ``Greater|GreaterOrEqual`` of
    ``Sigmoid(score)`` vs τ, of ``Sigmoid(score) − τ`` vs 0 (Router-Tuning), or of ``score``
    vs t; a sigmoid threshold τ becomes t = logit(τ)."""
    cmp = _strip(mask, ("Cast", "Identity", "Unsqueeze", "Expand")).producer()
    if cmp is None or cmp.op_type not in ("Greater", "GreaterOrEqual"):
        raise MatchFailure("mask: expected Greater/GreaterOrEqual of the router score")
    a, c = cmp.inputs
    c = const_array(c)
    if c is None or c.size != 1:
        raise MatchFailure("mask: expected a comparison with a constant")
    t = float(c.reshape(-1)[0])
    sub = a.producer()
    if sub is not None and sub.op_type == "Sub" and const_array(sub.inputs[1]) is not None:
        t += float(const_array(sub.inputs[1]).reshape(-1)[0])
        a = sub.inputs[0]
    if a.producer() is not None and a.producer().op_type == "Sigmoid":
        if not 0 < t < 1:
            raise MatchFailure(f"mask: sigmoid threshold {t} outside (0, 1)")
        return _router(a, unit_axis=True), math.log(t / (1 - t))
    return _router(a, unit_axis=True), t


def _read_masked(root: ir.Node) -> Routed:
    """The masked form (Router-Tuning): ``Add(X, Mul(U, mask))`` where every token ran the
    FFN and the 0/1 mask of ``score > t`` keeps its update; read as a causal selection so
    that the FFN runs on the kept tokens only."""
    if root.op_type != "Add" or root.domain != "":
        raise MatchFailure("expected Add(X, update · mask)")
    for data, upd in (root.inputs, root.inputs[::-1]):
        mul = upd.producer() if upd is not None else None
        if mul is None or mul.op_type != "Mul":
            continue
        for term, mask in (mul.inputs, mul.inputs[::-1]):
            try:
                selected, t = _masked_selection(mask)
            except MatchFailure:
                continue
            if not _same_source(selected["x"], data):
                raise MatchFailure("mask: the router score is not computed from the residual input")
            ffn = _dense_ffn(term)
            ln = _ffn_input(ffn, lambda v, d=data: _same_source(v, d), "the residual input")
            (xa, xb), (da, db) = _affine(term, lambda v, d=data: _same_source(v, d),
                                         _flattened(ffn)[1], None)
            return Routed(
                x=data, w_r=selected["w_r"], b_r=None, k=0, router="raw",
                x_coef=(xa + 1.0, xb), delta_coef=(da, db), selection="threshold",
                w_a=selected["w_r"], ln=ln, **_ffn_fields(ffn),
                b_a_value=(float(const_array(selected["b_r"]).reshape(-1)[0])
                           if selected["b_r"] is not None else 0.0) - t,
            )
    raise MatchFailure("expected Add(X, update · mask) with a 0/1 mask of a router score")


def _walk(value: ir.Value, depth: int = 12):
    """Producers above ``value`` (breadth first, bounded): where the combine's terms are."""
    seen, frontier = set(), [value]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            p = v.producer() if v is not None else None
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            yield p
            if not (p.op_type == "FFN" and p.domain == CANON):
                nxt.extend(p.inputs)
        frontier = nxt


def looks_routed(root: ir.Node) -> bool:
    """A scatter whose indices come from a TopK or a NonZero: MoD-shaped, worth a near-miss
    report (masked-form roots passed ``_masks`` already)."""
    if root.op_type == "Add":
        return True
    return any(n.op_type in ("TopK", "NonZero") for n in _walk(root.inputs[1], depth=8))


def _masks(add: ir.Node) -> bool:
    """Cheap pre-check of the masked form: an Add with a Mul operand fed by a comparison."""
    for v in add.inputs:
        mul = v.producer() if v is not None else None
        if mul is not None and mul.op_type == "Mul":
            for u in mul.inputs:
                p = _strip(u, ("Cast", "Identity", "Unsqueeze", "Expand"))
                if p is not None and p.producer() is not None and \
                        p.producer().op_type in ("Greater", "GreaterOrEqual"):
                    return True
    return False


def _vector(graph: ir.Graph, w: ir.Value) -> ir.Value:
    """A router weight [d, 1] as the op's [d] (a shared initializer)."""
    return initializer(graph, f"{w.name}__vec", const_array(w).reshape(-1))


def _scalar(graph: ir.Graph, name: str, value: ir.Value | float | None) -> ir.Value | None:
    """A [1] float32 initializer of a scalar (a Constant node would move into the region
    with the rest)."""
    if value is None:
        return None
    v = value if isinstance(value, float) else float(const_array(value).reshape(-1)[0])
    return initializer(graph, name, np.array([v], dtype=np.float32))


def _marker(graph: ir.Graph, root: ir.Node, region: list[ir.Node], m: Routed,
            rule: str) -> ir.Node:
    inputs = {"X": m.x, "WR": _vector(graph, m.w_r),
              "BR": _scalar(graph, f"{root.name}__router_bias", m.b_r),
              "W1": m.w1, "B1": m.b1, "W2": m.w2, "B2": m.b2}
    if m.b_a_value is not None:  # masked form: the threshold folded into the selection bias
        inputs.update(WA=_vector(graph, m.w_a),
                      BA=_scalar(graph, f"{root.name}__selection_bias", m.b_a_value))
    elif m.selection == "threshold" and m.w_a is not m.w_r:
        inputs.update(WA=_vector(graph, m.w_a),
                      BA=_scalar(graph, f"{root.name}__selection_bias", m.b_a))
    epsilon = 1e-5
    if m.ln is not None:
        scale, bias, epsilon = m.ln
        inputs.update(LS=scale, LB=bias if bias is not None else initializer(
            graph, f"{root.name}__ln_bias", np.zeros_like(const_array(scale), dtype=np.float32)))
    return ir.Node(
        CANON, "FFN", marker_inputs(ROUTED_FFN, **inputs),
        attributes=[
            ir.AttrString("kind", str(SiteKind.ROUTED)), ir.AttrString("activation", m.activation),
            ir.AttrString("up_activation", "none"), ir.AttrString("rule", rule),
            ir.AttrString("matched_nodes", ",".join(n.name or n.op_type for n in region)),
            ir.AttrString("selection", m.selection), ir.AttrInt64("k", m.k),
            *_capacity_attrs(m.capacity),
            ir.AttrString("router", m.router),
            ir.AttrFloat32s("x_coef", list(m.x_coef)),
            ir.AttrFloat32s("delta_coef", list(m.delta_coef)),
            ir.AttrFloat32("epsilon", float(epsilon)),
        ],
        num_outputs=1,
    )


def site(marker: RoutedMarker) -> Site:
    """The Site of a ``routed`` marker: the FFN's widths and how it is routed."""
    r = marker.routing
    w1, w2 = (const_array(marker.inputs[n]) for n in ("W1", "W2"))
    routing = {
        "selection": r.selection, "k": r.k, "capacity": r.capacity, "router": r.router,
        "router_bias": marker.inputs["BR"] is not None,
        "selection_score": marker.inputs["WA"] is not None,
        "selection_bias": marker.inputs["BA"] is not None,
        "layer_norm_epsilon": r.epsilon if marker.inputs["LS"] is not None else None,
        "x_coef": list(r.x_coef), "delta_coef": list(r.delta_coef),
    }
    return Site(
        name=marker.name, rule=marker.rule, kind=marker.kind, activation=marker.activation,
        up_activation="none", d_model=int(w1.shape[0]), d_ff=int(w1.shape[1]),
        d_out=int(w2.shape[1]), has_b1=marker.inputs["B1"] is not None,
        has_b2=marker.inputs["B2"] is not None, dtype=str(w1.dtype),
        matched_nodes=marker.matched, routing=routing,
    )


class _Routing(RegionRule):
    """A MoD form, by the op its region ends in."""

    tag = "mod"
    root_op = ""

    def takes(self, root: ir.Node) -> bool:
        return root.domain == "" and root.op_type == self.root_op

    def reportable(self, root: ir.Node) -> bool:
        return looks_routed(root)

    def rewrite(self, graph: ir.Graph, root: ir.Node, found: Routed,
                region: list[ir.Node]) -> ir.Node:
        return _marker(graph, root, region, found, self.name)


class TopKRouting(_Routing):
    """Replaces ``ScatterElements(X, e, combine(X_sel, FFN(X_sel), w))`` over the tokens a
    router's ``TopK`` selected (k constant or computed from S) with a ``routed`` marker.

    Matches: fffc.torch.MoDFFN (and the public MoD implementations' top-k form) from the
    dynamo (opset 18, optimized or not) and TorchScript (opset 17) exporters.
    """

    root_op = "ScatterElements"

    def read(self, root: ir.Node) -> Routed:
        return _read_topk(root)


class ThresholdRouting(_Routing):
    """Replaces ``ScatterND(X, idx, combine(X_sel, FFN(X_sel), w))`` over the tokens of a
    causal selection ``NonZero(Greater(Sigmoid(a), 0.5))`` with a ``routed`` marker.

    Matches: fffc.torch.MoDFFN.forward_causal from the dynamo and TorchScript exporters.
    """

    root_op = "ScatterND"

    def read(self, root: ir.Node) -> Routed:
        return _read_threshold(root)


class MaskedRouting(_Routing):
    """Replaces ``Add(X, FFN(X) · (score > t))`` with a ``routed`` marker of selection
    threshold (the FFN then runs on the kept tokens only).

    Matches: Router-Tuning's masked MoD (mask of Sigmoid(score) − τ, Sigmoid(score) > τ or
    score > t) written in ONNX ops.
    """

    root_op = "Add"

    def takes(self, root: ir.Node) -> bool:
        return super().takes(root) and _masks(root)

    def read(self, root: ir.Node) -> Routed:
        return _read_masked(root)


mod_topk_rule = TopKRouting("mod_topk")
mod_threshold_rule = ThresholdRouting("mod_threshold")
mod_masked_rule = MaskedRouting("mod_masked")
rules = RegionRuleSet([mod_topk_rule, mod_threshold_rule, mod_masked_rule],
                      title="Mixture-of-Depths")
