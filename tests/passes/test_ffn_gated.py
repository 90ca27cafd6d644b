"""ffn_gated: ``(act(x·Wg) ⊙ [Relu](x·Wu))·Wd`` FFNs (SwiGLU, ReGLU, dReLU; either Mul
operand order) become one gated site; a mismatched up projection is a near miss."""

from __future__ import annotations

import pytest

from fffc import passes
from tests.fixtures.graphs import D, F, G, detect, gated_ffn, rand


@pytest.mark.parametrize("gate,up_relu,family", [("relu", True, "dReLU"), ("relu", False, "ReGLU"),
                                                 ("silu", False, "SwiGLU")])
@pytest.mark.parametrize("swap_mul", [False, True])
def test_gated_ffn_found(gate, up_relu, family, swap_mul):
    _, sites = detect(gated_ffn(gate, up_relu, swap_mul))
    assert len(sites) == 1
    assert sites[0].kind == "gated" and sites[0].family == family


def test_up_projection_of_another_shape_is_a_near_miss():
    g = G()
    gate = g.op("Relu", g.op("MatMul", "x", g.init("Wg", rand(D, F))))
    up = g.op("MatMul", "x", g.init("Wu", rand(D, F // 2)))
    y = g.op("MatMul", g.op("Mul", gate, up), g.init("Wd", rand(F, D)))
    model, sites = detect(g.model(y))
    assert sites == []
    (miss,) = passes.near_misses(model)
    assert miss.reason == f"W_up shape: expected [{D}, {F}] like W_gate, got [{D}, {F // 2}]"
