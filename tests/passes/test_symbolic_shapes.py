"""The symbolic-shape algebra: monomial arithmetic, the shapes and shape-tensor contents
``Shapes`` follows through a graph, and ``encode``'s constant reshape targets. Expected
values are written out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from fffc.passes.symbolic_shapes import (
    ONE,
    Shapes,
    const,
    div,
    drops_last_unit_axis,
    encode,
    ints,
    ir_shape,
    mul,
    prod,
)

B, S = (1, ("B",)), (1, ("S",))


def test_monomial_arithmetic():
    assert mul((2, ("b",)), (3, ("a",))) == (6, ("a", "b"))
    assert div((6, ("a", "b")), (2, ("b",))) == (3, ("a",))
    assert div((6, ("a", "a")), (1, ("a",))) == (6, ("a",))
    assert div((6, ("a",)), (4, ())) is None  # 4 does not divide 6
    assert div((3, ("a",)), (1, ("b",))) is None  # b is not among a's names
    assert div((3, ()), (0, ())) is None
    assert prod([]) == ONE
    assert prod([B, S, (8, ())]) == (8, ("B", "S"))
    assert const((8, ())) == 8 and const(B) is None


def test_encode():
    src = [B, S, (8, ())]
    assert encode([B, S, (2, ()), (4, ())], src) == [0, 0, 2, 4]
    assert encode([(1, ("B", "S")), (8, ())], src) == [-1, 8]
    assert encode([B, S, (8, ())], src, allowzero=1) is None  # two dims left, no 0 copies
    assert encode([S, B, (8, ())], src) is None  # neither named dim at its input axis
    assert encode([(0, ()), (8, ())], src) is None  # a zero-sized dim has no encoding


def _model(nodes, inputs, outputs, inits=()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.from_proto(proto)


def _i64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _values(model: ir.Model) -> dict[str, ir.Value]:
    out = {v.name: v for n in model.graph for v in n.outputs}
    out.update({v.name: v for v in model.graph.inputs})
    out.update(model.graph.initializers)
    return out


def test_a_computed_reshape_target_is_the_product_of_the_input_dims():
    # Reshape(x, Concat(Unsqueeze(Shape(x)[0] * Shape(x)[1]), [8])), x [B, S, 8]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["s"], axis=0),
        helper.make_node("Mul", ["b", "s"], ["bs"]),
        helper.make_node("Unsqueeze", ["bs", "ax0"], ["bs1"]),
        helper.make_node("Concat", ["bs1", "eight"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Reshape", ["x", "minus1_8"], ["flat2"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("flat2", TensorProto.FLOAT, None)],
        [_i64("i0", 0), _i64("i1", 1), _i64("ax0", [0]), _i64("eight", [8]),
         _i64("minus1_8", [-1, 8])])
    v, shapes = _values(model), Shapes()
    assert shapes.shape(v["x"]) == [B, S, (8, ())]
    assert shapes.values(v["shape"]) == [B, S, (8, ())]
    assert shapes.values(v["target"]) == [(1, ("B", "S")), (8, ())]
    assert shapes.shape(v["flat"]) == [(1, ("B", "S")), (8, ())]
    assert shapes.shape(v["flat2"]) == shapes.shape(v["flat"])  # -1 is the quotient
    assert shapes.shape(v["y"]) == shapes.shape(v["flat"])
    assert ints(v["minus1_8"]) == [-1, 8] and ints(v["x"]) is None


def test_unnamed_dims_are_fresh_and_never_equal():
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    v, shapes = _values(model), Shapes()
    x, z = shapes.shape(v["x"]), shapes.shape(v["z"])
    assert x == shapes.shape(v["x"])  # one value, one name
    assert x[0] != z[0] and x[0][0] == 1 and len(x[0][1]) == 1
    y = shapes.broadcast(x, z)
    assert y[1] == (8, ()) and y[0] not in (x[0], z[0])  # two unknowns: unknown again
    assert ir_shape(y) == ir.Shape([None, 8])  # fresh names are not written back
    assert ir_shape([B, (2, ("S",)), (4, ())]) == ir.Shape(["B", None, 4])


def test_broadcast():
    shapes = Shapes()
    assert shapes.broadcast([B, S, (8, ())], [(8, ())]) == [B, S, (8, ())]
    assert shapes.broadcast([B, ONE, (8, ())], [S, ONE]) == [B, S, (8, ())]
    assert shapes.broadcast([(4, ())], [(8, ())]) is None
    assert shapes.broadcast([S], [(8, ())]) == [(8, ())]  # S is 1 or 8
    assert shapes.broadcast(None, [(8, ())]) is None


def _dropping(last: int) -> ir.Node:
    nodes = [
        helper.make_node("Shape", ["x"], ["lead"], start=0, end=2),
        helper.make_node("Reshape", ["x", "lead"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", last])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return _values(model)["y"].producer()


def test_drops_last_unit_axis():
    assert drops_last_unit_axis(_dropping(1))
    assert not drops_last_unit_axis(_dropping(2))
