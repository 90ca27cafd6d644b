"""Canonicalization rules: each exporter form becomes one canonical node, numerically equal."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from fffc import passes
from fffc.passes._common import CANON

from .graphs import D, G, erf_gelu, rand, run, scalar, tanh_gelu, to_ir, x_probe


def _canon_ops(model) -> list[str]:
    return [n.op_type for n in model.graph if n.domain == CANON]


def _roundtrip(m: onnx.ModelProto):
    """Canonicalize, legalize back, check validity and equality with the original."""
    model = to_ir(m)
    counts = passes.canonicalize(model)
    ops = _canon_ops(model)
    passes.legalize(model)
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out)
    x = x_probe()
    np.testing.assert_allclose(run(out, x), run(m, x), rtol=1e-5, atol=1e-6)
    return counts, ops


@pytest.mark.parametrize("order", ["dynamo", "torchscript"])
def test_erf_gelu_chains_become_one_gelu(order):
    g = G()
    y = erf_gelu(g, g.op("Add", g.init("b", rand(D)), "x"), order)
    counts, ops = _roundtrip(g.model(y))
    assert counts["gelu"] == 1
    assert ops == ["Gelu"]


def test_tanh_gelu_chain_becomes_gelu_tanh():
    g = G()
    counts, ops = _roundtrip(g.model(tanh_gelu(g, "x")))
    assert counts["gelu"] == 1 and ops == ["Gelu"]


def test_opset20_gelu_and_ms_gelus():
    g = G()
    y = g.op("Gelu", "x", approximate="tanh")
    y = g.op("BiasGelu", y, g.init("b", rand(D)), domain="com.microsoft")
    y = g.op("FastGelu", y, domain="com.microsoft")
    m = g.model(y, opset=20, ms=True)
    counts, ops = _roundtrip(m)
    assert counts["gelu"] == 3 and ops == ["Gelu", "Gelu", "Gelu"]


def test_silu_forms():
    g = G()
    y = g.op("Mul", g.op("Sigmoid", "x"), "x")  # operand order as some exporters write it
    y = g.op("QuickGelu", y, domain="com.microsoft", alpha=1.0)
    counts, ops = _roundtrip(g.model(y, ms=True))
    assert counts["silu"] == 2 and ops == ["Silu", "Silu"]


def test_quickgelu_with_other_alpha_is_not_silu():
    g = G()
    y = g.op("QuickGelu", "x", domain="com.microsoft", alpha=1.702)
    counts, ops = _roundtrip(g.model(y, ms=True))
    assert counts["silu"] == 0 and ops == []


def test_wrong_constant_is_not_gelu():
    g = G()
    c = g.op("Erf", g.op("Div", "x", g.init("s", scalar(2.0))))  # not √2
    y = g.op("Mul", g.op("Mul", "x", g.op("Add", c, g.init("one", scalar(1.0)))),
             g.init("half", scalar(0.5)))
    counts, ops = _roundtrip(g.model(y))
    assert counts["gelu"] == 0 and ops == []


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_becomes_matmul_add(trans_b):
    g = G()
    w = rand(D, 24) if not trans_b else rand(24, D)
    flat = g.op("Reshape", "x", g.init("s1", np.array([-1, D], np.int64)))
    y = g.op("Gemm", flat, g.init("w", w), g.init("b", rand(24)), transB=trans_b)
    y = g.op("Reshape", y, g.init("s2", np.array([2, 5, 24], np.int64)))
    m = g.model(y)
    counts, _ = _roundtrip(m)
    model = to_ir(m)
    passes.canonicalize(model)
    assert counts["conv1d"] == 1
    assert sorted(n.op_type for n in model.graph) == ["Add", "MatMul"]


def test_transposed_weight_is_folded():
    g = G()
    y = g.op("MatMul", "x", g.op("Transpose", g.init("w", rand(64, D)), perm=[1, 0]))
    m = g.model(y)
    _roundtrip(m)
    model = to_ir(m)
    passes.canonicalize(model)
    assert [n.op_type for n in model.graph] == ["MatMul"]
    assert model.graph.node(0).inputs[1].const_value is not None
