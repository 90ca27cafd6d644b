"""canonical_gelu: every exporter's GELU (erf and tanh chains, opset 20, com.microsoft forms)
becomes one canonical Gelu, numerically equal; near-GELU chains stay as they are."""

from __future__ import annotations

import pytest

from tests.fixtures.graphs import D, G, canonical_roundtrip, erf_gelu, rand, scalar, tanh_gelu


@pytest.mark.parametrize("order", ["dynamo", "torchscript"])
def test_erf_gelu_chains_become_one_gelu(order):
    g = G()
    y = erf_gelu(g, g.op("Add", g.init("b", rand(D)), "x"), order)
    counts, ops = canonical_roundtrip(g.model(y))
    assert counts["gelu"] == 1
    assert ops == ["Gelu"]


def test_tanh_gelu_chain_becomes_gelu_tanh():
    g = G()
    counts, ops = canonical_roundtrip(g.model(tanh_gelu(g, "x")))
    assert counts["gelu"] == 1 and ops == ["Gelu"]


def test_opset20_gelu_and_ms_gelus():
    g = G()
    y = g.op("Gelu", "x", approximate="tanh")
    y = g.op("BiasGelu", y, g.init("b", rand(D)), domain="com.microsoft")
    y = g.op("FastGelu", y, domain="com.microsoft")
    m = g.model(y, opset=20, ms=True)
    counts, ops = canonical_roundtrip(m)
    assert counts["gelu"] == 3 and ops == ["Gelu", "Gelu", "Gelu"]


def test_wrong_constant_is_not_gelu():
    g = G()
    c = g.op("Erf", g.op("Div", "x", g.init("s", scalar(2.0))))  # not √2
    y = g.op("Mul", g.op("Mul", "x", g.op("Add", c, g.init("one", scalar(1.0)))),
             g.init("half", scalar(0.5)))
    counts, ops = canonical_roundtrip(g.model(y))
    assert counts["gelu"] == 0 and ops == []
