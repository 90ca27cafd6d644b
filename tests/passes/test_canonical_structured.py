"""canonical_structured: block-diagonal products (bmm and einsum spellings, BlockShuffle's
grid) become StructuredLinear / BlockShuffle only where they are one; a MatMul chain is
low-rank only with a bottleneck."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fffc import pipeline
from fffc.passes.canonical_structured import _einsum_perm, _shuffle_einsum_perm


def test_matmul_chain_without_bottleneck_is_not_low_rank(tmp_path):
    """MatMul(MatMul(x, V), U) is LowRank only with a middle narrower than both ends."""
    rng = np.random.default_rng(0)
    inits = {"V": rng.standard_normal((16, 32)), "U": rng.standard_normal((32, 24)),
             "W": rng.standard_normal((24, 16)), "b": rng.standard_normal(24)}
    nodes = [helper.make_node("MatMul", ["x", "V"], ["h"]), helper.make_node("MatMul", ["h", "U"], ["u"]),
             helper.make_node("Add", ["u", "b"], ["ub"]), helper.make_node("Relu", ["ub"], ["a"]),
             helper.make_node("MatMul", ["a", "W"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    a = pipeline.analyze(tmp_path / "m.onnx")
    # the 32-wide middle is no bottleneck (16 → 32 → 24): the dense FFN rule takes the rest
    assert [s.kind for s in a.sites] == ["dense"]
    assert not any(n.op_type == "StructuredLinear" for n in a.working.graph)


@pytest.mark.parametrize("equation, perm", [
    ("bkp,kqp->bkq", (0, 2, 1)),
    ("bkp,kpq->bkq", (0, 1, 2)),
    ("nki,koi->nko", (0, 2, 1)),
    ("bkp,pkq->bkq", (1, 0, 2)),
    ("bkp,kqp->bqk", None),  # output axes swapped: not a per-block product
    ("bkp,kqp->bkp", None),
    ("kqp,bkp->bkq", None),  # weight first: not this form
    ("bkp,kq->bkq", None),
])
def test_einsum_equations(equation, perm):
    assert _einsum_perm(equation) == perm


@pytest.mark.parametrize("equation, perm", [
    ("nrm,msr->nsm", (0, 2, 1)),  # fffc.torch's BlockShuffleLinear(form="einsum")
    ("nrm,mrs->nsm", (0, 1, 2)),
    ("bji,itj->bti", (0, 2, 1)),
    ("nrm,msr->nms", None),  # output not in (s, m) order: another layout
    ("nrm,nsr->nsm", None),  # the token axis in the weight
    ("nrm,msr->nsr", None),  # no sum over r
])
def test_shuffle_einsum_equations(equation, perm):
    assert _shuffle_einsum_perm(equation) == perm


def test_block_output_reshape_that_keeps_the_leading_dims_stays(tmp_path):
    """A bmm block-diagonal product whose output reshape is ``Concat(Shape(x)[:2], [k·q])``
    (x [B, S, k·p]: the output [B, S, k·q], not the flat [B·S, k·q] a StructuredLinear
    gives) is left as it is: canonicalization keeps the model's output."""
    import onnx_ir as ir

    from fffc import passes

    k, p, q = 4, 6, 3
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Reshape", ["x", "s_in"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["t", "A"], ["m"]),
             helper.make_node("Transpose", ["m"], ["u"], perm=[1, 0, 2]),
             helper.make_node("Shape", ["x"], ["lead"], start=0, end=2),
             helper.make_node("Concat", ["lead", "width"], ["s_out"], axis=0),
             helper.make_node("Reshape", ["u", "s_out"], ["y"])]
    inits = [numpy_helper.from_array(np.array([-1, k, p], np.int64), "s_in"),
             numpy_helper.from_array(np.array([k * q], np.int64), "width"),
             numpy_helper.from_array(rng.standard_normal((k, p, q)).astype(np.float32), "A")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k * p])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", k * q])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model = ir.serde.deserialize_model(m)
    passes.canonicalize(model)
    assert not any(n.op_type == "StructuredLinear" for n in model.graph)
    passes.legalize(model)
    x = rng.standard_normal((2, 3, k * p)).astype(np.float32)
    run = [ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"]
                                ).run(None, {"x": x})[0] for g in (m, ir.serde.serialize_model(model))]
    assert run[1].shape == (2, 3, k * q)
    np.testing.assert_array_equal(run[1], run[0])
