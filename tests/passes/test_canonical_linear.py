"""canonical_linear: Gemm (GPT-2's Conv1D Reshape → Gemm → Reshape) becomes MatMul + Add and
transposed constant weights are folded, numerically equal."""

from __future__ import annotations

import numpy as np
import pytest

from fffc import passes
from tests.fixtures.graphs import D, G, canonical_roundtrip, rand, to_ir


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_becomes_matmul_add(trans_b):
    g = G()
    w = rand(D, 24) if not trans_b else rand(24, D)
    flat = g.op("Reshape", "x", g.init("s1", np.array([-1, D], np.int64)))
    y = g.op("Gemm", flat, g.init("w", w), g.init("b", rand(24)), transB=trans_b)
    y = g.op("Reshape", y, g.init("s2", np.array([2, 5, 24], np.int64)))
    m = g.model(y)
    counts, _ = canonical_roundtrip(m)
    model = to_ir(m)
    passes.canonicalize(model)
    assert counts["conv1d"] == 1
    assert sorted(n.op_type for n in model.graph) == ["Add", "MatMul"]


def test_transposed_weight_is_folded():
    g = G()
    y = g.op("MatMul", "x", g.op("Transpose", g.init("w", rand(64, D)), perm=[1, 0]))
    m = g.model(y)
    canonical_roundtrip(m)
    model = to_ir(m)
    passes.canonicalize(model)
    assert [n.op_type for n in model.graph] == ["MatMul"]
    assert model.graph.node(0).inputs[1].const_value is not None
