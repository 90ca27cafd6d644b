"""Pieces every site kind's lowering shares: the ``ai.fffc`` node with its model-local
fallback function, the op's input layouts, replacing a marker, putting a kept region back,
the ``If`` on the token count between the op and another branch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from fffc.contract.modes import Layout, Mode
from fffc.contract.ops import DOMAIN, OPSET_VERSION, OpSpec

from .. import weight_dtype
from .._common import const_array, initializer, transposed_from
from .._region import detach, restore
from ..markers import Marker


def default_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))


@dataclass(frozen=True)
class Lowering:
    """The model being lowered and its default opset."""

    model: ir.Model
    opset: int

    @property
    def graph(self) -> ir.Graph:
        return self.model.graph


def rows(graph: ir.Graph, value: ir.Value) -> ir.Value:
    """``value.T`` as a shared initializer ``<name>__rows``: one row per neuron (the gated
    up projection, W1 of a predictor) or per tree node (an FFF's W_in). A marker input that
    is itself a transposed copy of an initializer gives that initializer back."""
    original = transposed_from(graph, value)
    if original is not None:
        return original
    return initializer(graph, f"{value.name}{weight_dtype.ROWS}", const_array(value).T)


def laid_out(graph: ir.Graph, inputs: Mapping[str, ir.Value | None],
             mode: Mode) -> dict[str, ir.Value | None]:
    """``inputs`` (a marker's, by op input name) in the op's layout for ``mode``. The row
    copies are registered from the op's last input back (the artifact's initializer order)."""
    out = dict(inputs)
    for name in reversed(list(out)):
        if mode.layouts.get(name) is Layout.ROWS and out[name] is not None:
            out[name] = rows(graph, out[name])
    return out


def provenance(marker: Marker, matched: bool = True) -> dict[str, str]:
    """The metadata an ai.fffc node carries: the rule that matched (and its matched nodes)."""
    out = {"fffc.rule": marker.rule}
    if matched:
        out["fffc.matched_nodes"] = marker.matched_nodes
    return out


def function_attrs(spec: OpSpec) -> list[ir.Attr]:
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


def fallback(spec: OpSpec, overload: str, formals: list[ir.Value], tape: ir.tape.Tape,
             y: ir.Value, opset: int, domains: Mapping[str, int] | None = None) -> ir.Function:
    """The model-local function ``(DOMAIN, spec.name, overload)``: the body on ``tape``
    computing ``y`` from ``formals`` in standard ops (and ops of ``domains``: domain →
    version)."""
    y.name = "Y"
    graph = ir.Graph(formals, [y], nodes=tape.nodes, opset_imports={"": opset, **(domains or {})},
                     name=f"{spec.name}_{overload}")
    return ir.Function(DOMAIN, spec.name, overload, graph=graph, attributes=function_attrs(spec))


def fffc_node(ctx: Lowering, tape: ir.tape.Tape, marker: Marker, spec: OpSpec,
              inputs: Mapping[str, ir.Value | None], attrs: dict, overload: str,
              function: Callable[[], ir.Function], metadata: dict[str, str]) -> ir.Value:
    """The ai.fffc ``spec`` node in place of ``marker`` on ``tape`` (``inputs`` by the op's
    input names; trailing absent ones dropped), with its model-local fallback function made
    once per overload; a marker tagged by ``weight_dtype.round_weights`` gets 16-bit weights
    and a widening fallback, and so does a 16-bit model's, its op between a Cast of X to
    float32 and one of Y back (the op's contract stays float32 activations)."""
    args = [inputs.get(a.name) for a in spec.inputs]
    model = weight_dtype.model_dtype(spec.name, args)  # a 16-bit model's dtype
    dtype = model if model != "float32" else weight_dtype.node_dtype(marker.node)
    if dtype != "float32":  # 16-bit weights: narrow inputs, a widening fallback
        args = weight_dtype.narrow_inputs(ctx.graph, spec.name, args, dtype)
        overload = f"{overload}_{weight_dtype.NARROW[dtype][1]}"
        build = function
        function = lambda: weight_dtype.widen_function(build(), spec.name, dtype)  # noqa: E731
    if model != "float32":  # a 16-bit model: the op between Casts of X and Y
        args = weight_dtype.widened_activations(ctx.graph, tape, spec.name, args, marker.name)
    while args and args[-1] is None:
        args.pop()
    out = tape.op(spec.name, args, attrs, domain=DOMAIN, overload=overload, name=marker.name,
                  metadata_props=metadata)
    key = (DOMAIN, spec.name, overload)
    if key not in ctx.model.functions:
        ctx.model.functions[key] = function()
    ctx.model.opset_imports[DOMAIN] = OPSET_VERSION
    if model != "float32":
        out = weight_dtype.narrowed_output(tape, out, model, marker.name)
    return out


def replace(node: ir.Node, tape: ir.tape.Tape, new_out: ir.Value) -> None:
    """``node`` replaced, in its own (sub)graph, by the nodes on ``tape``; ``new_out`` takes
    its output's name."""
    graph = node.graph
    old_out = node.outputs[0]
    name = old_out.name
    ir.convenience.replace_nodes_and_values(graph, node, [node], tape.nodes, [old_out], [new_out])
    if new_out.name != name and not any(o is new_out for o in graph.outputs):
        new_out.name = name


def graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """``graph`` and the subgraphs of its standard nodes (If branches), nested ones too,
    outer first (not a marker's kept region: that is no part of the model until put back)."""
    yield graph
    for node in list(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from graphs(attr.value)


Subgraph = tuple[list[ir.Node], ir.Value]  # an If branch: its nodes, in order, and its output


def taped(tape: ir.tape.Tape, out: ir.Value, prefix: str) -> Subgraph:
    """The nodes on ``tape`` as a branch, named ``<prefix>/<i>_<op>`` (values ``<prefix>_i_j``)
    so they stay unique beside the outer graph's names."""
    for i, n in enumerate(tape.nodes):
        n.name = f"{prefix}/{i}_{n.op_type}"
        for j, v in enumerate(n.outputs):
            v.name = f"{prefix.replace('/', '__')}_{i}_{j}"
    return list(tape.nodes), out


def region(marker: Marker) -> Subgraph:
    """A marker's kept region (FFF, MoD), as it was exported, as a branch (a marker inside
    it is lowered after, in the branch)."""
    return detach(marker.node)


def token_dispatch(tape: ir.tape.Tape, marker: Marker, d_in: int, limit: int,
                   kernel: Subgraph, beyond: Subgraph) -> ir.Value:
    """``If(Size(X) <= limit·d_in, kernel, beyond)`` on ``tape`` for a marker: the op's
    branch for calls of up to ``limit`` tokens, the other beyond."""
    name = marker.name
    x = marker.inputs["X"]
    (k_nodes, k_out), (b_nodes, b_out) = kernel, beyond
    k_out.name, b_out.name = f"{name}__kernel_y", f"{name}__beyond_y"
    then_graph = ir.Graph([], [k_out], nodes=k_nodes, name=f"{name}_kernel")
    else_graph = ir.Graph([], [b_out], nodes=b_nodes, name=f"{name}_beyond")
    size = tape.op("Size", [x], name=f"{name}/tokens")
    bound = tape.op("Constant", [], {"value": ir.tensor(np.array(limit * d_in, dtype=np.int64))},
                    name=f"{name}/max_tokens")
    cond = tape.op("LessOrEqual", [size, bound], name=f"{name}/few_tokens")
    for v, suffix in ((size, "size"), (bound, "limit"), (cond, "few")):
        v.name = f"{name}__{suffix}"
    return tape.op("If", [cond], {"then_branch": then_graph, "else_branch": else_graph},
                   name=f"{name}/dispatch")


def put_back(ctx: Lowering, marker: Marker, _plan=None) -> None:
    """A marker that kept its matched region (FFF, MoD) left as it was: the region back in
    its place, under the marker's output name."""
    node = marker.node
    graph = node.graph
    out = restore(graph, node)
    old = node.outputs[0]
    name = old.name
    for i, o in enumerate(graph.outputs):  # first: a graph output cannot be replaced in uses
        if o is old:
            graph.outputs[i] = out
    ir.convenience.replace_all_uses_with(old, out)
    graph.remove(node, safe=False)
    out.name = name


def drop_unused_initializers(graph: ir.Graph) -> None:
    """Initializers no node of the graph (or of its If branches) reads any more, e.g. W_in in
    MatMul orientation once an FFF is walked from its row-per-node copy."""
    live = {id(g) for g in graphs(graph)}
    for name, value in list(graph.initializers.items()):
        used = any(u.node.graph is not None and id(u.node.graph) in live for u in value.uses())
        if not used and value not in graph.outputs and value not in graph.inputs:
            del graph.initializers[name]
