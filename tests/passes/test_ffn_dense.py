"""ffn_dense: ``MatMul → (Add) → act → MatMul → (Add)`` FFNs become one dense site with
their activation, widths and biases; regions no rule takes are near misses with the
reason of the best partial match."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fffc import passes
from fffc.contract.kinds import SiteKind
from fffc.passes import ffn_dense
from fffc.passes.markers import decode, markers
from tests.fixtures.graphs import D, F, G, dense_ffn, detect, rand


@pytest.mark.parametrize("act,expected", [("relu", "relu"), ("gelu", "gelu"),
                                          ("gelu_tanh", "gelu_tanh"), ("silu", "silu")])
@pytest.mark.parametrize("bias_first", [False, True])
def test_dense_ffn_found(act, expected, bias_first):
    _, sites = detect(dense_ffn(act, bias_first))
    assert len(sites) == 1
    s = sites[0]
    assert (s.kind, s.activation, s.d_model, s.d_ff, s.d_out, s.has_b1, s.has_b2) == (
        "dense", expected, D, F, D, True, True)


def test_dense_ffn_without_second_bias():
    _, sites = detect(dense_ffn("relu", b2=False))
    assert len(sites) == 1 and not sites[0].has_b2


def test_marker_is_read_back_as_the_site():
    """The marker holds SparseFFN's inputs by name; the family's ``site`` reads it."""
    model, (site,) = detect(dense_ffn("relu", b2=False))
    (node,) = markers(model.graph)
    marker = decode(node)
    assert marker.kind is SiteKind.DENSE and marker.rule == site.rule
    assert [n for n, v in marker.inputs.items() if v is not None] == ["X", "W1", "B1", "W2"]
    assert ffn_dense.site(marker) == site


def test_fp16_weights_are_a_float16_site():
    """A float16 model's FFN is found with its dtype (the plan leaves it as it was)."""
    g = G()
    h = g.op("Relu", g.op("MatMul", "x", g.init("W1", rand(D, F).astype(np.float16))))
    y = g.op("MatMul", h, g.init("W2", rand(F, D).astype(np.float16)))
    _, (site,) = detect(g.model(y, elem=onnx.TensorProto.FLOAT16))
    assert (site.kind, site.dtype, site.d_model, site.d_ff) == (SiteKind.DENSE, "float16", D, F)


def test_fp64_weights_are_rejected_with_reason():
    g = G()
    h = g.op("Relu", g.op("MatMul", "x", g.init("W1", rand(D, F).astype(np.float64))))
    y = g.op("MatMul", h, g.init("W2", rand(F, D).astype(np.float64)))
    model, sites = detect(g.model(y, elem=onnx.TensorProto.DOUBLE))
    assert sites == []
    misses = passes.near_misses(model)
    assert len(misses) == 1
    assert "expected float32, float16 or bfloat16 weights, got float64" in misses[0].reason


def test_intermediate_used_elsewhere_is_not_rewritten():
    g = G()
    h = g.op("Relu", g.op("MatMul", "x", g.init("W1", rand(D, F))))
    y = g.op("MatMul", h, g.init("W2", rand(F, D)))
    side = g.op("ReduceSum", h, keepdims=0)  # the activation escapes the FFN
    y = g.op("Add", y, g.op("Unsqueeze", side, g.init("ax", np.array([-1], np.int64))))
    model, sites = detect(g.model(y))
    assert sites == []
    assert passes.near_misses(model)
