"""Canonical nodes outside FFN sites back to opset-correct standard ops."""

from __future__ import annotations

import onnx_ir as ir

from .. import canonical_quant, standard_forms
from .._common import CANON, const_array, initializer
from ..markers import MARKER
from ._emit import default_opset, graphs, replace


def legalize(model: ir.Model) -> None:
    """Canonical Gelu/Silu/StructuredLinear/BlockShuffle nodes outside FFN sites (in the
    graph or an If branch) go back to opset-correct standard ops, quantized projections to
    their source nodes (``canonical_quant.restore``); a marker left here is an error."""
    graph = model.graph
    opset = default_opset(model)
    for node in [n for g in graphs(graph) for n in g if n.domain == CANON]:
        if node.op_type == MARKER:
            raise ValueError(f"FFN marker {node.name!r} was not lowered")
    for g in list(graphs(graph)):  # quantized weights first: their readers are the MatMuls
        canonical_quant.restore(g)
    for node in [n for g in graphs(graph) for n in g if n.domain == CANON]:
        tape = ir.tape.Tape()
        if node.op_type == "StructuredLinear":
            replace(node, tape, _structured_linear(graph, tape, node))
            continue
        if node.op_type == "BlockShuffle":
            h = standard_forms.blockdiag(tape, node.inputs[0], node.inputs[1])
            replace(node, tape, standard_forms.shuffled(tape, h, node.inputs[2]))
            continue
        if node.op_type == "Gelu":
            approx = node.attributes.get_string("approximate", "none")
            name = "gelu_tanh" if approx == "tanh" else "gelu"
        elif node.op_type == "Silu":
            name = "silu"
        else:
            raise ValueError(f"unknown canonical op {node.op_type}")
        out = standard_forms.activation(tape, name, node.inputs[0], opset,
                                        standard_forms.float_dtype(node.inputs[0]))
        replace(node, tape, out)
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
