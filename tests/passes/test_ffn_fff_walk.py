"""ffn_fff_walk: FastFeedForward layers written as the hard conditional walk (an unrolled
chain of row gathers, dot products and index updates per tree and level) are detected with
their K and D and compiled; other index arithmetic is a near miss with the reason."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import fffc
import fffc.runtime
from fffc.torch import FastFeedForward
from tests.fixtures.fff_exports import (
    Walk,
    check_ge_tie_break,
    check_site_inputs,
    export_fff,
    ge_tie_break_fff,
)

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("hidden, trees, depth, dynamo, opset", [
    (32, 1, 11, False, 17), (32, 1, 11, True, 18), (24, 4, 3, False, 20), (24, 4, 3, True, 20),
    (16, 16, 2, True, 18)])
def test_hard_walk_export_is_detected_and_compiled(hidden, trees, depth, dynamo, opset, tmp_path):
    """``forward_walk`` exported (eval_form="walk"): an unrolled chain of row gathers, dot
    products and index updates per tree and level, found with its K and D."""
    torch.manual_seed(trees)
    fff = FastFeedForward(hidden, hidden, depth, trees, eval_form="walk")
    path = export_fff(fff, tmp_path / "m.onnx", dynamo, opset)
    gathers = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert gathers["Gather" if not dynamo else "GatherND"] >= 3 * trees * (depth + 1)
    assert gathers["ScatterElements"] == 0  # not the masked form
    (site,) = fffc.inspect(path).sites
    assert (site.kind, site.rule, site.trees, site.depth) == ("fff", "fff_walk", trees, depth)
    assert (site.d_model, site.d_ff, site.d_out) == (hidden, trees * (2 ** (depth + 1) - 1), hidden)

    result = fffc.compile(path, tmp_path / "m.fffc")
    (site,) = result.sites
    assert site.decision == "tree" and site.max_rel_err < 1e-5
    model = onnx.load(str(result.artifact / "model.onnx"))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["FastFeedForward"] == 1 and ops["ReduceSum"] == 0 and ops["Erf"] == 0
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_kernel = fffc.runtime.InferenceSession(result.artifact)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])
    for b, s in ((1, 1), (3, 7)):
        x = np.random.default_rng(b * 10 + s).standard_normal((b, s, hidden)).astype(np.float32)
        want = fff(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(original.run(None, {"x": x})[0], want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
        for sess in (with_kernel, stock):
            np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4,
                                       atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("step, reason", [
    (lambda j, z: j * 2 + 2 - (z > 0).long(), "level 1 is not 2j + 1"),  # mirrored tree
    (lambda j, z: j * 2 + 1 + (z > 0.5).long(), "compare a node's pre-activation with 0"),
])
def test_walk_with_other_index_arithmetic_is_a_near_miss(step, reason, tmp_path):
    torch.manual_seed(0)
    walk = Walk(FastFeedForward(16, 16, 3, 2), step)
    found = fffc.inspect(export_fff(walk, tmp_path / "w.onnx", False, 17))
    assert found.sites == []
    assert any(reason in m.reason for m in found.near_misses), found.near_misses


def test_ge_tie_break_is_matched_exactly(tmp_path):
    """A walk going right on ``z >= 0``: tie_break "ge", exact also for a token whose root
    logit is exactly 0 (where "gt" would take the other child)."""
    fff = ge_tie_break_fff()
    check_ge_tie_break(Walk(fff, lambda j, z: j * 2 + 1 + (z >= 0).long()), fff, tmp_path)


def test_site_inputs_hold_w_in_row_per_node(tmp_path):
    """The op's layout of the walk export's weights (``check_site_inputs``)."""
    torch.manual_seed(0)
    check_site_inputs(FastFeedForward(16, 16, 3, 2, eval_form="walk"), tmp_path / "m.onnx")
