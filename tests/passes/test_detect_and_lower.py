"""FFN detection rules and lowering: positive and negative cases, fallback equality."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fffc import passes
from fffc.contract.kinds import Decision
from fffc.contract.lowering import SiteLowering
from fffc.ops import DOMAIN

from .graphs import D, F, G, erf_gelu, rand, run, tanh_gelu, to_ir, x_probe


def dense_ffn(act: str, bias_first: bool = False, b2: bool = True, dtype=np.float32) -> onnx.ModelProto:
    g = G()
    h = g.op("MatMul", "x", g.init("W1", rand(D, F, scale=0.3).astype(dtype)))
    b1 = g.init("b1", rand(F).astype(dtype))
    h = g.op("Add", b1, h) if bias_first else g.op("Add", h, b1)
    a = {"relu": lambda: g.op("Relu", h), "gelu": lambda: erf_gelu(g, h, "dynamo"),
         "gelu_tanh": lambda: tanh_gelu(g, h),
         "silu": lambda: g.op("Mul", h, g.op("Sigmoid", h))}[act]()
    y = g.op("MatMul", a, g.init("W2", rand(F, D, scale=0.2).astype(dtype)))
    if b2:
        y = g.op("Add", y, g.init("b2", rand(D).astype(dtype)))
    return g.model(y)


def gated_ffn(gate: str, up_relu: bool, swap_mul: bool = False) -> onnx.ModelProto:
    g = G()
    gg = g.op("MatMul", "x", g.init("Wg", rand(D, F, scale=0.3)))
    ga = g.op("Relu", gg) if gate == "relu" else g.op("Mul", gg, g.op("Sigmoid", gg))
    u = g.op("MatMul", "x", g.init("Wu", rand(D, F, scale=0.3)))
    if up_relu:
        u = g.op("Relu", u)
    z = g.op("Mul", u, ga) if swap_mul else g.op("Mul", ga, u)
    return g.model(g.op("MatMul", z, g.init("Wd", rand(F, D, scale=0.2))))


def _detect(m: onnx.ModelProto):
    model = to_ir(m)
    passes.canonicalize(model)
    return model, passes.detect(model)


def _lower_and_check(m: onnx.ModelProto, exact: bool = True) -> onnx.ModelProto:
    model, sites = _detect(m)
    passes.lower(model, {s.name: SiteLowering(Decision.EXACT if exact else Decision.DENSE)
                         for s in sites})
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    x = x_probe()
    np.testing.assert_allclose(run(out, x), run(m, x), rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("act,expected", [("relu", "relu"), ("gelu", "gelu"),
                                          ("gelu_tanh", "gelu_tanh"), ("silu", "silu")])
@pytest.mark.parametrize("bias_first", [False, True])
def test_dense_ffn_found(act, expected, bias_first):
    _, sites = _detect(dense_ffn(act, bias_first))
    assert len(sites) == 1
    s = sites[0]
    assert (s.kind, s.activation, s.d_model, s.d_ff, s.d_out, s.has_b1, s.has_b2) == (
        "dense", expected, D, F, D, True, True)


def test_dense_ffn_without_second_bias():
    _, sites = _detect(dense_ffn("relu", b2=False))
    assert len(sites) == 1 and not sites[0].has_b2


@pytest.mark.parametrize("gate,up_relu,family", [("relu", True, "dReLU"), ("relu", False, "ReGLU"),
                                                 ("silu", False, "SwiGLU")])
@pytest.mark.parametrize("swap_mul", [False, True])
def test_gated_ffn_found(gate, up_relu, family, swap_mul):
    _, sites = _detect(gated_ffn(gate, up_relu, swap_mul))
    assert len(sites) == 1
    assert sites[0].kind == "gated" and sites[0].family == family


@pytest.mark.parametrize("model", [dense_ffn("relu"), dense_ffn("relu", b2=False),
                                   gated_ffn("relu", True), gated_ffn("relu", False, True)])
def test_exact_lowering_emits_sparse_ffn_with_fallback_function(model):
    out = _lower_and_check(model, exact=True)
    nodes = [n for n in out.graph.node if n.domain == DOMAIN]
    assert len(nodes) == 1 and nodes[0].op_type == "SparseFFN"
    funcs = {(f.domain, f.name, f.overload) for f in out.functions}
    assert (DOMAIN, "SparseFFN", nodes[0].overload) in funcs
    assert not any(o.domain.startswith("ai.fffc.canon") for o in out.opset_import)


@pytest.mark.parametrize("model", [dense_ffn("relu"), gated_ffn("relu", True)])
def test_token_dispatch_runs_sparse_up_to_the_limit_and_dense_beyond(model):
    """``max_tokens``: If(Size(X) <= limit·d) { SparseFFN } else { the dense FFN }."""
    lowered, sites = _detect(model)
    passes.lower(lowered, {s.name: SiteLowering(Decision.EXACT, max_tokens=4) for s in sites})
    out = ir.serde.serialize_model(lowered)
    onnx.checker.check_model(out)
    (dispatch,) = [n for n in out.graph.node if n.op_type == "If"]
    then_g, else_g = (onnx.helper.get_attribute_value(a) for a in dispatch.attribute)
    assert [n.op_type for n in then_g.node] == ["SparseFFN"] and then_g.node[0].domain == DOMAIN
    assert all(n.domain == "" for n in else_g.node) and "MatMul" in {n.op_type for n in else_g.node}
    limit = next(n for n in out.graph.node if n.op_type == "Constant")
    assert onnx.numpy_helper.to_array(limit.attribute[0].t) == 4 * D
    for tokens in (1, 4, 5, 12):  # both branches, in stock ORT (fallback function)
        x = rand(1, tokens, D)
        np.testing.assert_allclose(run(out, x), run(model, x), rtol=1e-5, atol=1e-5)


def test_gated_lowering_stores_up_projection_row_per_neuron():
    out = _lower_and_check(gated_ffn("relu", True), exact=True)
    node = next(n for n in out.graph.node if n.domain == DOMAIN)
    inits = {i.name: i for i in out.graph.initializer}
    assert list(inits[node.input[5]].dims) == [F, D]  # WU is [d_ff, d_in]


def test_dense_lowering_restores_standard_ops():
    out = _lower_and_check(dense_ffn("gelu"), exact=False)
    assert all(n.domain == "" for n in out.graph.node) and not out.functions


def test_fp16_weights_are_rejected_with_reason():
    g = G()
    h = g.op("Relu", g.op("MatMul", "x", g.init("W1", rand(D, F).astype(np.float16))))
    y = g.op("MatMul", h, g.init("W2", rand(F, D).astype(np.float16)))
    model, sites = _detect(g.model(y, elem=onnx.TensorProto.FLOAT16))
    assert sites == []
    misses = passes.near_misses(model)
    assert len(misses) == 1
    assert "expected float32 weights, got float16" in misses[0].reason


def test_intermediate_used_elsewhere_is_not_rewritten():
    g = G()
    h = g.op("Relu", g.op("MatMul", "x", g.init("W1", rand(D, F))))
    y = g.op("MatMul", h, g.init("W2", rand(F, D)))
    side = g.op("ReduceSum", h, keepdims=0)  # the activation escapes the FFN
    y = g.op("Add", y, g.op("Unsqueeze", side, g.init("ax", np.array([-1], np.int64))))
    model, sites = _detect(g.model(y))
    assert sites == []
    assert passes.near_misses(model)


def test_lowering_is_deterministic():
    m = gated_ffn("relu", True)
    a = _lower_and_check(m).SerializeToString()
    b = _lower_and_check(m).SerializeToString()
    assert a == b
