"""canonical_silu: ``x * Sigmoid(x)`` (either operand order) and QuickGelu(alpha=1) become
one canonical Silu, numerically equal; QuickGelu with another alpha is not SiLU."""

from __future__ import annotations

from tests.fixtures.graphs import G, canonical_roundtrip


def test_silu_forms():
    g = G()
    y = g.op("Mul", g.op("Sigmoid", "x"), "x")  # operand order as some exporters write it
    y = g.op("QuickGelu", y, domain="com.microsoft", alpha=1.0)
    counts, ops = canonical_roundtrip(g.model(y, ms=True))
    assert counts["silu"] == 2 and ops == ["Silu", "Silu"]


def test_quickgelu_with_other_alpha_is_not_silu():
    g = G()
    y = g.op("QuickGelu", "x", domain="com.microsoft", alpha=1.702)
    counts, ops = canonical_roundtrip(g.model(y, ms=True))
    assert counts["silu"] == 0 and ops == []
