"""Lowering: FFN markers become ``ai.fffc`` nodes with fallback functions, or standard ops.

A site planned ``exact`` becomes one ``ai.fffc::SparseFFN`` node whose weights are laid
out for the kernel (the gated up projection stored row-per-neuron) plus a model-local
function with the same (domain, op_type) and an overload per configuration, so the model
still runs in a stock ONNX Runtime. Any other site goes back to standard ops. Finally
every canonical node left is legalized for the model's opset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from fffc.contract.ops import (
    DOMAIN,
    FAST_FEED_FORWARD,
    OPSET_VERSION,
    ROUTED_FFN,
    SPARSE_FFN,
    STRUCTURED_FFN,
)
from fffc.contract.structure import merged_weight

from . import ffn_fff, standard_forms, weight_dtype
from ._common import CANON, const_array, initializer

INPUT_NAMES = [a.name for a in SPARSE_FFN.inputs]


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))


def markers(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if n.domain == CANON and n.op_type == "FFN"]


def _attrs(node: ir.Node) -> dict[str, str]:
    return {k: node.attributes.get_string(k, "") for k in
            ("kind", "activation", "up_activation", "rule", "matched_nodes")}


def overload_for(activation: str, up_activation: str, present: list[bool],
                 mode: str = "exact") -> str:
    """Deterministic overload name: one fallback function per op configuration."""
    optional = [(a.name, p) for a, p in zip(SPARSE_FFN.inputs, present, strict=True) if a.optional]
    flags = "".join(name.lower() for name, p in optional
                    if p and name not in ("TH", "PA", "PB", "PC"))  # XC, HC: in the name
    return f"{activation}_{up_activation}_{flags or 'nobias'}" + ("" if mode == "exact" else f"_{mode}")


def _fallback_function(overload: str, present: list[bool], act: str, up_act: str,
                       opset: int, mode: str = "exact") -> ir.Function:
    formals = [ir.Value(name=n) for n in INPUT_NAMES]
    tape = ir.tape.Tape()
    x, w1, b1, w2, b2, wu, th, pa, pb, pc, xc, hc = (
        f if p else None for f, p in zip(formals, present, strict=True))
    thresholds = gate = None
    if mode in ("teal", "cats"):  # TH [t_in, t_hidden | t_gate] → two scalars
        t_in, t_2 = (tape.op("Gather", [th, tape.op("Constant", [], {
            "value": ir.tensor(np.array(i, dtype=np.int64))})], {"axis": 0}) for i in (0, 1))
        thresholds, gate = ((t_in, t_2), None) if mode == "teal" else ((t_in, None), t_2)
    y = standard_forms.ffn(tape, x, w1, b1, w2, b2, wu, activation_name=act,
                           up_activation=up_act, opset=opset, wu_rows=mode != "teal",
                           thresholds=thresholds, w1_rows=mode == "predictor",
                           predictor=(pa, pb, pc) if mode == "predictor" else None,
                           gate_threshold=gate, centers=(xc, hc), keep_centers=False)
    y.name = "Y"
    graph = ir.Graph(formals, [y], nodes=tape.nodes, opset_imports={"": opset},
                     name=f"{SPARSE_FFN.name}_{overload}")
    return ir.Function(DOMAIN, SPARSE_FFN.name, overload, graph=graph,
                       attributes=_function_attrs(SPARSE_FFN))


def _row_major_up(graph: ir.Graph, wu: ir.Value) -> ir.Value:
    """``wu.T`` as a shared initializer ``<name>__rows``: one row per neuron (the gated up
    projection) or per tree node (an FFF's W_in)."""
    original = ffn_fff.transposed_from(graph, wu)
    if original is not None:
        return original  # the marker's W_in is a transposed copy of the export's rows
    return initializer(graph, f"{wu.name}__rows", const_array(wu).T)


def lower(model: ir.Model, decisions: Mapping[str, str],
          max_tokens: Mapping[str, int] | None = None,
          thresholds: Mapping[str, tuple[standard_forms.Threshold, standard_forms.Threshold]]
          | None = None,
          predictors: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
          gate_thresholds: Mapping[str, tuple[float, float]] | None = None,
          merged: Mapping[str, int] | None = None,
          centers: Mapping[str, Centers] | None = None) -> None:
    """Replace every marker: ``decisions[name]`` "exact" or "teal" → SparseFFN, else standard ops.

    ``max_tokens[name] > 0`` bounds the token count the SparseFFN kernel serves: the site
    becomes ``If(Size(X) <= max_tokens·d_in)`` with SparseFFN in the then-branch and the
    original dense FFN in the else-branch, so calls past the kernel's measured crossover run
    ONNX Runtime's own GEMMs and the artifact is never slower there than the original.
    ``thresholds[name]`` = (t_in, t_hidden): a "teal" site's thresholds (constants); a site
    left in standard ops becomes TEAL's thresholded FFN (``standard_forms.ffn``), the
    reference of threshold modes. ``predictors[name]`` = (A [d, r], B [r, d_ff], C [d_ff],
    cut folded into C): the same for mode "predictor" (only neurons scoring > 0 count); a
    fourth element, a scalar graph input, is added to the scores of a site left in standard
    ops (0: the predictor applies; a huge value: every neuron counts), to search modes;
    ``gate_thresholds[name]`` = (t_in, t_gate) for mode "cats". A structured marker
    planned "structured" becomes ``ai.fffc::StructuredFFN``; ``merged[name] > 0`` adds its
    pre-merged dense weights for calls of up to that many tokens. ``centers[name]`` =
    (c_in | None, c_hidden | None): centered TEAL thresholds of that site (an entry within
    the threshold of its channel's center becomes the center); a teal SparseFFN gets them
    as XC / HC with the centers' share folded into B1 / B2 (``fold_centers``).
    """
    graph = model.graph
    opset = default_opset(model)
    pending = markers(graph)
    while pending:  # a routed site left as it was brings its inner FFN marker back
        _lower_markers(model, pending, opset, decisions, max_tokens, thresholds, predictors,
                       gate_thresholds, merged, centers or {})
        pending = markers(graph)
    legalize(model)
    weight_dtype.share_narrow_weights(model.graph)
    common_passes.RemoveUnusedNodesPass()(model)
    _drop_unused_initializers(model.graph)


def _lower_markers(model, pending, opset, decisions, max_tokens, thresholds, predictors,
                   gate_thresholds, merged, centers) -> None:
    graph = model.graph
    for node in pending:
        a = _attrs(node)
        x, w1, b1, w2, b2, wu = (node.inputs + (None,) * 6)[:6]
        tape = ir.tape.Tape()
        if a["kind"] == "fff":
            _lower_fff(model, node, decisions.get(node.name, "dense"), opset)
            continue
        if a["kind"] == "structured":
            _lower_structured(model, node, decisions.get(node.name, "dense"), opset,
                              (merged or {}).get(node.name, 0))
            continue
        if a["kind"] == "routed":
            _lower_routed(model, node, decisions.get(node.name, "dense"), opset)
            continue
        site_thresholds = (thresholds or {}).get(node.name)
        site_centers = _center_initializers(graph, node, centers.get(node.name))
        site_gate = (gate_thresholds or {}).get(node.name)
        site_predictor = ((predictors or {}).get(node.name))
        pred = (_predictor_initializers(graph, node, site_predictor[:3]) if site_predictor
                else None)
        if site_predictor and len(site_predictor) > 3:  # the switch of a searched model
            pred = (*pred[:2], tape.op("Add", [pred[2], site_predictor[3]]))
        if decisions.get(node.name) in ("exact", "teal", "cats", "predictor"):
            mode = decisions[node.name]
            params = {"teal": site_thresholds, "cats": site_gate, "predictor": pred}.get(mode, ())
            if params is None:
                raise ValueError(f"site {node.name!r}: mode {mode} needs its parameters")
            limit = (max_tokens or {}).get(node.name, 0)
            branch = ir.tape.Tape() if limit > 0 else tape
            new_out = _sparse_ffn(model, node, branch, a, opset, mode,
                                  site_gate if mode == "cats" else site_thresholds, pred,
                                  site_centers if mode == "teal" else (None, None))
            if limit > 0:
                new_out = _token_dispatch(tape, node, branch, new_out, a, opset, limit,
                                          site_thresholds if mode == "teal" else None,
                                          pred if mode == "predictor" else None,
                                          site_gate if mode == "cats" else None,
                                          site_centers if mode == "teal" else (None, None))
        else:
            new_out = standard_forms.ffn(
                tape, x, w1, b1, w2, b2, wu, activation_name=a["activation"],
                up_activation=a["up_activation"], opset=opset, wu_rows=False,
                thresholds=site_thresholds or ((site_gate[0], None) if site_gate else None),
                predictor=pred, gate_threshold=site_gate[1] if site_gate else None,
                centers=site_centers)
        _replace(graph, node, tape, new_out)


def _drop_unused_initializers(graph: ir.Graph) -> None:
    """Initializers no node of the graph (or of its If branches) reads any more, e.g. W_in in
    MatMul orientation once an FFF is walked from its row-per-node copy."""
    live = {id(graph)}
    stack = [graph]
    while stack:
        for node in stack.pop():
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH and node.graph is not None:
                    live.add(id(attr.value))
                    stack.append(attr.value)
    for name, value in list(graph.initializers.items()):
        used = any(u.node.graph is not None and id(u.node.graph) in live for u in value.uses())
        if not used and value not in graph.outputs and value not in graph.inputs:
            del graph.initializers[name]


def _provenance(node: ir.Node, matched: bool = True) -> dict[str, str]:
    """The metadata an ai.fffc node carries: the rule that matched (and its matched nodes)."""
    out = {"fffc.rule": node.attributes.get_string("rule", "")}
    if matched:
        out["fffc.matched_nodes"] = node.attributes.get_string("matched_nodes", "")
    return out


def _fffc_node(model: ir.Model, tape: ir.tape.Tape, node: ir.Node, op: str, inputs: list,
               attrs: dict, overload: str, function: Callable[[], ir.Function],
               metadata: dict[str, str]) -> ir.Value:
    """The ai.fffc ``op`` node in place of ``node`` on ``tape`` (trailing absent inputs
    dropped), with its model-local fallback function made once per overload; a marker
    tagged by ``weight_dtype.round_weights`` gets 16-bit weights and a widening fallback."""
    inputs = list(inputs)
    dtype = weight_dtype.node_dtype(node)
    if dtype != "float32":  # 16-bit weights (CUDA): narrow inputs, a widening fallback
        inputs = weight_dtype.narrow_inputs(model.graph, op, inputs, dtype)
        overload = f"{overload}_{weight_dtype.NARROW[dtype][1]}"
        build = function
        function = lambda: weight_dtype.widen_function(build(), op, dtype)  # noqa: E731
    while inputs and inputs[-1] is None:
        inputs.pop()
    out = tape.op(op, inputs, attrs, domain=DOMAIN, overload=overload, name=node.name,
                  metadata_props=metadata)
    key = (DOMAIN, op, overload)
    if key not in model.functions:
        model.functions[key] = function()
    model.opset_imports[DOMAIN] = OPSET_VERSION
    return out


def _lower_fff(model: ir.Model, node: ir.Node, decision: str, opset: int) -> None:
    """An FFF marker: ``tree`` → ai.fffc::FastFeedForward (+ the walk as fallback function),
    ``walk`` → the conditional walk in standard ops, else its original region back."""
    graph = model.graph
    trees, depth = node.attributes.get_int("trees", 1), node.attributes.get_int("depth", 1)
    tie_break = node.attributes.get_string("tie_break", "gt")
    if decision in ("tree", "walk"):
        x, w_in, b_in, w_out = node.inputs[:4]
        tape = ir.tape.Tape()
        rows = _row_major_up(graph, w_in)
        if decision == "tree":
            overload = f"k{trees}_d{depth}_{tie_break}"
            attrs = {"trees": trees, "depth": depth, "activation": "gelu", "tie_break": tie_break}
            out = _fffc_node(model, tape, node, FAST_FEED_FORWARD.name, [x, rows, b_in, w_out],
                             attrs, overload,
                             lambda: _fff_function(overload, trees, depth, tie_break, opset),
                             _provenance(node, matched=False))
        else:
            out = standard_forms.fff_walk(tape, x, rows, b_in, w_out, trees=trees, depth=depth,
                                          opset=opset, tie_break=tie_break)
            for i, n in enumerate(tape.nodes):
                n.name = f"{node.name}/walk/{i}_{n.op_type}"
        _replace(graph, node, tape, out)
        return
    _put_back(graph, node)


def _put_back(graph: ir.Graph, node: ir.Node) -> None:
    """A marker that kept its matched region (FFF, MoD) left as it was: the region back in
    its place, under the marker's output name."""
    out = ffn_fff.restore(graph, node)
    old = node.outputs[0]
    name = old.name
    for i, o in enumerate(graph.outputs):  # first: a graph output cannot be replaced in uses
        if o is old:
            graph.outputs[i] = out
    ir.convenience.replace_all_uses_with(old, out)
    graph.remove(node, safe=False)
    out.name = name


STRUCTURED_INPUTS = [a.name for a in STRUCTURED_FFN.inputs]


def _lower_structured(model: ir.Model, node: ir.Node, decision: str, opset: int,
                      merged_max_tokens: int) -> None:
    """A structured marker (X, A1, U1, B1, A2, U2, B2): ``structured`` → StructuredFFN
    (+ its standard-op body as fallback function), else the standard ops themselves."""
    x, a1, u1, b1, a2, u2, b2, _, _, s1, s2 = (*node.inputs, *[None] * 11)[:11]
    act = node.attributes.get_string("activation", "gelu")
    tape = ir.tape.Tape()
    if decision != "structured":
        out = standard_forms.structured_ffn(tape, x, a1, u1, b1, a2, u2, b2,
                                            activation_name=act, opset=opset, s1=s1, s2=s2)
        for i, n in enumerate(tape.nodes):
            n.name = f"{node.name}/structured/{i}_{n.op_type}"
        _replace(model.graph, node, tape, out)
        return
    m1 = m2 = None
    if merged_max_tokens > 0:
        m1, m2 = (initializer(model.graph, f"{node.name}__merged_{i}",
                               merged_weight(*(const_array(v) if v is not None
                                                         else None for v in (a, u, sh)))
                               .astype(np.float32))
                  for i, (a, u, sh) in enumerate(((a1, u1, s1), (a2, u2, s2)), start=1))
    inputs = [x, a1, u1, b1, a2, u2, b2, m1, m2, s1, s2]
    present = [v is not None for v in inputs]
    overload = f"{act}_" + "".join(n.lower() for n, p in zip(STRUCTURED_INPUTS, present,
                                                              strict=True) if p and n != "X")
    out = _fffc_node(model, tape, node, STRUCTURED_FFN.name, inputs,
                     {"activation": act, "merged_max_tokens": merged_max_tokens}, overload,
                     lambda: _structured_function(overload, present, act, opset),
                     _provenance(node))
    _replace(model.graph, node, tape, out)


ROUTED_INPUTS = [a.name for a in ROUTED_FFN.inputs]


def capacity_of(node: ir.Node) -> dict | None:
    """The k_* attributes of a routed marker or RoutedFFN (None: a constant k)."""
    a = node.attributes
    if a.get_float("k_scale", 0.0) <= 0 and a.get_int("k_divisor", 0) <= 0:
        return None
    return {"scale": a.get_float("k_scale", 0.0), "divisor": a.get_int("k_divisor", 0),
            "round": a.get_string("k_round", "trunc"), "min": a.get_int("k_min", 0)}


def routing_of(node: ir.Node) -> dict:
    """A routed marker's (or RoutedFFN node's) routing attributes."""
    get = node.attributes.get_string
    return {"activation": get("activation", "gelu"), "k": node.attributes.get_int("k", 1),
            "capacity": capacity_of(node),
            "router": get("router", "raw"), "selection": get("selection", "topk"),
            "epsilon": node.attributes.get_float("epsilon", 1e-5),
            "x_coef": tuple(float(v) for v in node.attributes["x_coef"].value),
            "delta_coef": tuple(float(v) for v in node.attributes["delta_coef"].value)}


def _lower_routed(model: ir.Model, node: ir.Node, decision: str, opset: int) -> None:
    """A routed marker: ``routed`` → ai.fffc::RoutedFFN (+ its standard-op body as the
    fallback function), else the export's own region back (its FFN marker is lowered next)."""
    graph = model.graph
    if decision != "routed":
        _put_back(graph, node)
        return
    r = routing_of(node)
    inputs = list((*node.inputs, *[None] * 11)[:11])
    present = [v is not None for v in inputs]
    coefs = "_".join(f"{c:g}" for c in (*r["x_coef"], *r["delta_coef"]))
    cap = r["capacity"]
    sel = "threshold" if r["selection"] != "topk" else f"k{r['k']}" if cap is None else (
        f"kdiv{cap['divisor']}" if cap["divisor"] else f"k{cap['round']}{cap['scale']:g}") + (
        f"min{cap['min']}" if cap and cap["min"] else "")
    sel += f"_ln{r['epsilon']:g}" if present[9] else ""
    overload = (f"{r['activation']}_{sel}_{r['router']}_{coefs}_" +
                "".join(n.lower() for n, p in zip(ROUTED_INPUTS, present, strict=True)
                        if p and n != "X")).replace(".", "p").replace("-", "m")
    tape = ir.tape.Tape()
    out = _fffc_node(model, tape, node, ROUTED_FFN.name, inputs,
                     {"activation": r["activation"], "selection": r["selection"], "k": r["k"],
                      **({} if cap is None else {"k_scale": cap["scale"],
                                                 "k_divisor": cap["divisor"],
                                                 "k_round": cap["round"], "k_min": cap["min"]}),
                      "router": r["router"], "x_coef": list(r["x_coef"]),
                      "delta_coef": list(r["delta_coef"]), "epsilon": r["epsilon"]},
                     overload, lambda: _routed_function(overload, present, r, opset),
                     _provenance(node))
    _replace(graph, node, tape, out)


def _routed_function(overload: str, present: list[bool], r: dict, opset: int) -> ir.Function:
    """RoutedFFN's fallback: top-k routing in standard ops (k, router and combine fixed per
    overload)."""
    formals = [ir.Value(name=n) for n in ROUTED_INPUTS]
    tape = ir.tape.Tape()
    x, wr, br, w1, b1, w2, b2, wa, ba, ls, lb = (f if p else None
                                                 for f, p in zip(formals, present, strict=True))
    y = standard_forms.routed_ffn(tape, x, wr, br, w1, b1, w2, b2, wa, ba,
                                  activation_name=r["activation"], selection=r["selection"],
                                  k=r["k"], capacity=r["capacity"], router=r["router"],
                                  x_coef=r["x_coef"],
                                  delta_coef=r["delta_coef"], opset=opset,
                                  layer_norm=(ls, lb, r["epsilon"]) if ls is not None else None)
    y.name = "Y"
    graph = ir.Graph(formals, [y], nodes=tape.nodes, opset_imports={"": opset},
                     name=f"{ROUTED_FFN.name}_{overload}")
    return ir.Function(DOMAIN, ROUTED_FFN.name, overload, graph=graph,
                       attributes=_function_attrs(ROUTED_FFN))


def _function_attrs(spec) -> list[ir.Attr]:
    """The declared attributes of a fallback function, with the op's defaults."""
    out = []
    for a in spec.attributes:
        if a.type == "floats":
            out.append(ir.Attr(a.name, ir.AttributeType.FLOATS,
                               [float(v) for v in str(a.default).split(",")]))
        elif a.type == "float":
            out.append(ir.Attr(a.name, ir.AttributeType.FLOAT, float(a.default)))
        else:
            kinds = {"int": ir.AttributeType.INT, "string": ir.AttributeType.STRING}
            out.append(ir.Attr(a.name, kinds[a.type], a.default))
    return out


def _structured_function(overload: str, present: list[bool], act: str,
                         opset: int) -> ir.Function:
    """StructuredFFN's fallback: the structured path in standard ops (M1/M2 unused: the
    merged weights compute the same function)."""
    formals = [ir.Value(name=n) for n in STRUCTURED_INPUTS]
    tape = ir.tape.Tape()
    x, a1, u1, b1, a2, u2, b2, _, _, s1, s2 = (f if p else None
                                               for f, p in zip(formals, present, strict=True))
    y = standard_forms.structured_ffn(tape, x, a1, u1, b1, a2, u2, b2, activation_name=act,
                                      opset=opset, s1=s1, s2=s2)
    y.name = "Y"
    graph = ir.Graph(formals, [y], nodes=tape.nodes, opset_imports={"": opset},
                     name=f"{STRUCTURED_FFN.name}_{overload}")
    return ir.Function(DOMAIN, STRUCTURED_FFN.name, overload, graph=graph,
                       attributes=_function_attrs(STRUCTURED_FFN))


def _fff_function(overload: str, trees: int, depth: int, tie_break: str,
                  opset: int) -> ir.Function:
    """FastFeedForward's fallback in standard ops (X is [T, d_in]): the conditional walk, or
    the masked form for wide forests (``standard_forms.fff_fallback``)."""
    formals = [ir.Value(name=a.name) for a in FAST_FEED_FORWARD.inputs]
    tape = ir.tape.Tape()
    y = standard_forms.fff_fallback(tape, *formals, trees=trees, depth=depth, opset=opset,
                                    tie_break=tie_break)
    y.name = "Y"
    graph = ir.Graph(formals, [y], nodes=tape.nodes, opset_imports={"": opset},
                     name=f"{FAST_FEED_FORWARD.name}_{overload}")
    return ir.Function(DOMAIN, FAST_FEED_FORWARD.name, overload, graph=graph,
                       attributes=_function_attrs(FAST_FEED_FORWARD))


Centers = tuple[np.ndarray | None, np.ndarray | None]  # (c_in [d_in], c_hidden [d_ff])


def fold_centers(w1: np.ndarray, b1: np.ndarray | None, w2: np.ndarray, b2: np.ndarray | None,
                 centers: Centers) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(B1, B2) of a centered teal SparseFFN: the centers' share added, B1 + XC·W1 and
    B2 + HC·W2 (summed in float64, stored float32), so that thresholding x - XC and
    a - HC computes the FFN with each entry near its center replaced by the center."""
    c_in, c_hidden = centers

    def plus(b, c, w):
        if c is None:
            return b
        s = np.asarray(c, np.float64) @ np.asarray(w, np.float64)
        return (s if b is None else s + np.asarray(b, np.float64)).astype(np.float32)

    return plus(b1, c_in, w1), plus(b2, c_hidden, w2)


def _center_initializers(graph: ir.Graph, node: ir.Node,
                         centers: Centers | None) -> tuple[ir.Value | None, ir.Value | None]:
    """``<site>__center_{in,hidden}`` initializers (float32) of a site's centers."""
    if centers is None:
        return None, None
    if centers[0] is not None and _attrs(node)["kind"] == "gated":
        raise ValueError(f"site {node.name!r}: a gated FFN's input has no center (its up "
                         "projection has no bias to hold the center's share)")
    return tuple(None if c is None else
                 initializer(graph, f"{node.name}__center_{part}", np.asarray(c, np.float32))
                 for part, c in zip(("in", "hidden"), centers, strict=True))


def _thresholds_initializer(graph: ir.Graph, node: ir.Node,
                            thresholds: tuple[float, float]) -> ir.Value:
    """``<site>__teal_thresholds`` = [t_in, t_hidden | t_gate] (float32; negative = off)."""
    return initializer(graph, f"{node.name}__teal_thresholds",
                       np.array([-1.0 if t is None else t for t in thresholds], dtype=np.float32))


def _predictor_initializers(graph: ir.Graph, node: ir.Node,
                            arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple:
    """``<site>__predictor_{a,b,c}`` initializers (float32) of a predictor."""
    return tuple(initializer(graph, f"{node.name}__predictor_{part}",
                             np.asarray(arr, dtype=np.float32))
                 for part, arr in zip("abc", arrays, strict=True))


def _sparse_ffn(model: ir.Model, node: ir.Node, tape: ir.tape.Tape, a: dict[str, str],
                opset: int, mode: str = "exact",
                thresholds: tuple[float, float] | None = None,
                predictor: tuple | None = None,
                centers: tuple[ir.Value | None, ir.Value | None] = (None, None)) -> ir.Value:
    """The SparseFFN node of a marker (and its fallback function, once per overload).
    Mode exact stores the gated up projection row per neuron, mode teal keeps it row per
    input channel (as the marker has it) and adds the thresholds input (and centers XC, HC,
    with B1, B2 holding their share: ``fold_centers``) (so does mode cats,
    with the up projection row per neuron: read only for open gates); mode predictor
    stores W1 and WU row per neuron and adds the predictor's factors."""
    x, w1, b1, w2, b2, wu = (node.inputs + (None,) * 6)[:6]
    wu_rows = _row_major_up(model.graph, wu) if wu is not None and mode != "teal" else None
    if mode == "teal":
        th = _thresholds_initializer(model.graph, node, thresholds)
        xc, hc = centers
        if xc is not None or hc is not None:
            f1, f2 = fold_centers(const_array(w1), const_array(b1) if b1 is not None else None,
                                  const_array(w2), const_array(b2) if b2 is not None else None,
                                  tuple(None if c is None else const_array(c) for c in centers))
            if xc is not None:
                b1 = initializer(model.graph, f"{node.name}__centered_b1", f1)
            if hc is not None:
                b2 = initializer(model.graph, f"{node.name}__centered_b2", f2)
        inputs = [x, w1, b1, w2, b2, wu, th, None, None, None, xc, hc]
    elif mode == "cats":
        th = _thresholds_initializer(model.graph, node, thresholds)
        inputs = [x, w1, b1, w2, b2, wu_rows, th, None, None, None, None, None]
    elif mode == "predictor":
        inputs = [x, _row_major_up(model.graph, w1), b1, w2, b2, wu_rows, None, *predictor,
                  None, None]
    else:
        inputs = [x, w1, b1, w2, b2, wu_rows, None, None, None, None, None, None]
    present = [v is not None for v in inputs]
    overload = overload_for(a["activation"], a["up_activation"], present, mode)
    return _fffc_node(
        model, tape, node, SPARSE_FFN.name, inputs,
        {"activation": a["activation"], "up_activation": a["up_activation"], "mode": mode},
        overload, lambda: _fallback_function(overload, present, a["activation"],
                                             a["up_activation"], opset, mode),
        {"fffc.rule": a["rule"], "fffc.matched_nodes": a["matched_nodes"]})


def _token_dispatch(tape: ir.tape.Tape, node: ir.Node, sparse: ir.tape.Tape,
                    sparse_out: ir.Value, a: dict[str, str], opset: int, limit: int,
                    thresholds: tuple[float, float] | None = None,
                    predictor: tuple | None = None,
                    gate: tuple[float, float] | None = None,
                    centers: tuple[ir.Value | None, ir.Value | None] = (None, None)) -> ir.Value:
    """``If(Size(X) <= limit·d_in, SparseFFN, dense FFN)`` for a marker (the dense FFN
    thresholded as the SparseFFN is, for mode teal: one function either way)."""
    x, w1, b1, w2, b2, wu = (node.inputs + (None,) * 6)[:6]
    d_in = const_array(w1).shape[0]
    dense = ir.tape.Tape()
    dense_out = standard_forms.ffn(
        dense, x, w1, b1, w2, b2, wu, activation_name=a["activation"],
        up_activation=a["up_activation"], opset=opset, wu_rows=False,
        thresholds=thresholds or ((gate[0], None) if gate else None), predictor=predictor,
        gate_threshold=gate[1] if gate else None, centers=centers)
    for i, n in enumerate(dense.nodes):  # unique beside the outer graph's names
        n.name = f"{node.name}/dense/{i}_{n.op_type}"
        for j, v in enumerate(n.outputs):
            v.name = f"{node.name}__dense_{i}_{j}"
    sparse_out.name = f"{node.name}__sparse_y"
    dense_out.name = f"{node.name}__dense_y"
    then_graph = ir.Graph([], [sparse_out], nodes=sparse.nodes, name=f"{node.name}_sparse")
    else_graph = ir.Graph([], [dense_out], nodes=dense.nodes, name=f"{node.name}_dense")
    size = tape.op("Size", [x], name=f"{node.name}/tokens")
    bound = tape.op("Constant", [], {"value": ir.tensor(np.array(limit * d_in, dtype=np.int64))},
                    name=f"{node.name}/max_tokens")
    cond = tape.op("LessOrEqual", [size, bound], name=f"{node.name}/few_tokens")
    for v, suffix in ((size, "size"), (bound, "limit"), (cond, "few")):
        v.name = f"{node.name}__{suffix}"
    return tape.op("If", [cond], {"then_branch": then_graph, "else_branch": else_graph},
                   name=f"{node.name}/dispatch")


def _replace(graph: ir.Graph, node: ir.Node, tape: ir.tape.Tape, new_out: ir.Value) -> None:
    old_out = node.outputs[0]
    name = old_out.name
    ir.convenience.replace_nodes_and_values(graph, node, [node], tape.nodes, [old_out], [new_out])
    if new_out.name != name and not any(o is new_out for o in graph.outputs):
        new_out.name = name


def legalize(model: ir.Model) -> None:
    """Canonical Gelu/Silu nodes outside FFN sites go back to opset-correct standard ops."""
    graph = model.graph
    opset = default_opset(model)
    for node in [n for n in graph if n.domain == CANON]:
        if node.op_type == "FFN":
            raise ValueError(f"FFN marker {node.name!r} was not lowered")
        tape = ir.tape.Tape()
        if node.op_type == "StructuredLinear":
            _replace(graph, node, tape, _structured_linear(graph, tape, node))
            continue
        if node.op_type == "BlockShuffle":
            h = standard_forms.blockdiag(tape, node.inputs[0], node.inputs[1])
            _replace(graph, node, tape, standard_forms.shuffled(tape, h, node.inputs[2]))
            continue
        if node.op_type == "Gelu":
            approx = node.attributes.get_string("approximate", "none")
            name = "gelu_tanh" if approx == "tanh" else "gelu"
        elif node.op_type == "Silu":
            name = "silu"
        else:
            raise ValueError(f"unknown canonical op {node.op_type}")
        out = standard_forms.activation(tape, name, node.inputs[0], opset)
        _replace(graph, node, tape, out)
    model.opset_imports.pop(CANON, None)


def _structured_linear(graph: ir.Graph, tape: ir.tape.Tape, node: ir.Node) -> ir.Value:
    """A StructuredLinear no FFN took, in standard ops: one MatMul for k = 1 (LowRank as the
    export had it), the exporters' reshape/transpose/MatMul form of a block diagonal else."""
    x, a = node.inputs[0], node.inputs[1]
    u = node.inputs[2] if len(node.inputs) > 2 else None
    arr = const_array(a)
    if arr.shape[0] == 1:
        w = initializer(graph, f"{a.name}__2d", arr[0])
        h = tape.op("MatMul", [x, w])
    else:
        h = standard_forms.blockdiag(tape, x, a)
    return tape.op("MatMul", [h, u]) if u is not None else h


def site_io(model: ir.Model) -> dict[str, tuple[str, str]]:
    """Marker name → (input value name, output value name), for capturing site activations."""
    return {n.name: (n.inputs[0].name, n.outputs[0].name) for n in markers(model.graph)}


def site_weights(model: ir.Model, name: str, mode: str = "exact",
                 centers: Centers | None = None) -> dict[str, np.ndarray | None]:
    """The tensors a SparseFFN node of this marker gets, in the op's layout for ``mode``
    (the up projection row per neuron for exact and predictor, row per input channel for
    teal; W1 row per neuron for predictor). Predictor factors are not included; a teal
    site's ``centers`` are (XC, HC, and B1, B2 holding their share)."""
    node = next(n for n in markers(model.graph) if n.name == name)
    kind = node.attributes.get_string("kind", "")
    if kind in ("structured", "routed"):
        names = (STRUCTURED_INPUTS if kind == "structured" else ROUTED_INPUTS)[1:]
        values = (*node.inputs, *[None] * 11)[1:1 + len(names)]
        return {k: (const_array(v) if v is not None else None)
                for k, v in zip(names, values, strict=True)}
    arrays = [const_array(v) if v is not None else None for v in (node.inputs + (None,) * 6)[:6]]
    out = dict(zip(INPUT_NAMES[:6], arrays, strict=True))
    out.pop("X")
    if out["WU"] is not None and mode != "teal":
        out["WU"] = np.ascontiguousarray(out["WU"].T)
    if mode == "predictor":
        out["W1"] = np.ascontiguousarray(out["W1"].T)
    if mode == "teal" and centers is not None and any(c is not None for c in centers):
        b1, b2 = fold_centers(out["W1"], out["B1"], out["W2"], out["B2"], centers)
        out.update(B1=b1, B2=b2, XC=None if centers[0] is None else np.asarray(centers[0], np.float32),
                   HC=None if centers[1] is None else np.asarray(centers[1], np.float32))
    return out


def expose(model: ir.Model, names: list[str]) -> None:
    """Add the named intermediate values as graph outputs (for activation capture)."""
    values = {v.name: v for n in model.graph for v in n.outputs}
    values.update({v.name: v for v in model.graph.inputs})
    present = {v.name for v in model.graph.outputs}
    for name in names:
        if name not in present:
            model.graph.outputs.append(values[name])
            present.add(name)
