"""canonical_linear: Gemm (GPT-2's Conv1D Reshape → Gemm → Reshape) becomes MatMul + Add and
transposed constant weights are folded, numerically equal."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnxscript.rewriter import pattern

from fffc import passes
from fffc.passes import canonical_linear
from tests.fixtures.graphs import D, F, G, canonical_roundtrip, detect, rand, to_ir


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


def _packed_gated(split: str, parts: int = 2, sizes: list[int] | None = None):
    """A gated FFN whose gate and up projections are one packed MatMul [D, 2F] cut by
    Slices or a Split of the last axis (Phi-3's ``gate_up_proj``)."""
    g = G()
    sizes = sizes or [2 * F // parts] * parts
    packed = g.op("MatMul", "x", g.init("Wgu", rand(D, sum(sizes), scale=0.3)))
    if split == "slice":
        bounds = np.cumsum([0, *sizes]).tolist()
        pieces = [g.op("Slice", packed, g.init(f"s{i}", np.array([bounds[i]], np.int64)),
                       g.init(f"e{i}", np.array([bounds[i + 1]], np.int64)),
                       g.init(f"a{i}", np.array([-1], np.int64)))
                  for i in range(parts)]
    else:
        out = [f"part{i}" for i in range(parts)]
        g.nodes.append(helper.make_node("Split", [packed, g.init("sizes", np.array(sizes, np.int64))],
                                        out, name="split", axis=-1))
        pieces = out
    gate, up = pieces[0], pieces[1]
    act = g.op("Mul", gate, g.op("Sigmoid", gate))
    h = g.op("Mul", up, act)
    if parts == 3:  # the third piece read too (a QKV projection's V)
        h = g.op("Add", h, pieces[2]) if sizes[2] == sizes[0] else h
    return g.model(g.op("MatMul", h, g.init("Wd", rand(sizes[0], D, scale=0.2))))


@pytest.mark.parametrize("split", ["slice", "split"])
def test_packed_gate_up_becomes_two_projections(split):
    m = _packed_gated(split)
    counts, _ = canonical_roundtrip(m)
    assert counts["linear"] in (1, 2)  # a Slice each, or the one Split
    model, sites = detect(m)
    assert len(sites) == 1
    s = sites[0]
    assert (s.kind, s.activation, s.d_model, s.d_ff) == ("gated", "silu", D, F)
    w = m_inits(m)["Wgu"]  # the halves are W's columns, in order
    halves = {n: v.const_value.numpy() for n, v in model.graph.initializers.items()
              if "__half" in n}
    np.testing.assert_array_equal(halves["Wgu__half0"], w[:, :F])
    np.testing.assert_array_equal(halves["Wgu__half1"], w[:, F:])


@pytest.mark.parametrize("split", ["slice", "split"])
def test_projection_cut_in_three_stays_packed(split):
    """A QKV projection (three pieces) is left as one MatMul: no FFN comes of it."""
    m = _packed_gated(split, parts=3)
    counts, _ = canonical_roundtrip(m)
    assert counts["linear"] == 0
    _, sites = detect(m)
    assert sites == []


def test_slices_of_thirds_say_why_they_stay_packed():
    m = _packed_gated("slice", parts=3)
    model = to_ir(m)
    passes.canonicalize(model)
    tracer = pattern.MatchingTracer()
    rule = next(r for r in canonical_linear.rules.rules if r.name == "PackedHalfSlice")
    for node in [n for n in model.graph if n.op_type == "Slice"]:
        rule.try_rewrite(model, model.graph, node, tracer=tracer)
    reasons = {i.match_result.reason for infos in tracer.best_matches_map.values()
               for i in infos}
    assert reasons == {f"packed projection: expected its [.., {2 * F // 3 * 3}] product read only by "
                       "Slices of its halves"}


def m_inits(m) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
