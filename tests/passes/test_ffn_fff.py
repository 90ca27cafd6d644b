"""ffn_fff: UltraFastBERT FFF layers (the masked form) in real exports are detected with
their K and D, compiled (kernel; the conditional walk or the masked form as fallback
function), equal to the original in ONNX Runtime; a site left as it was keeps the exported
region node for node; near misses say why."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import fffc
import fffc.runtime
from fffc import passes
from fffc.passes import ffn_fff
from fffc.passes.standard_forms import MASKED_BELOW_RATIO
from fffc.torch import FastFeedForward
from tests.fixtures.fff_exports import (
    GeqFFF,
    check_ge_tie_break,
    check_site_inputs,
    export_fff,
    ge_tie_break_fff,
)
from tests.fixtures.graphs import to_ir

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("hidden, trees, depth, dynamo, opset", [
    (32, 1, 11, False, 17), (32, 1, 11, True, 18), (24, 4, 3, False, 20), (24, 4, 3, True, 20),
    (16, 128, 4, False, 17)])
def test_fff_export_is_detected_and_compiled(hidden, trees, depth, dynamo, opset, tmp_path):
    torch.manual_seed(trees)
    path = export_fff(FastFeedForward(hidden, hidden, depth, trees), tmp_path / "m.onnx", dynamo, opset)
    (site,) = fffc.inspect(path).sites
    assert (site.kind, site.trees, site.depth) == ("fff", trees, depth)
    assert (site.d_model, site.d_ff, site.d_out) == (hidden, trees * (2 ** (depth + 1) - 1), hidden)
    assert site.family == f"FFF {trees}x{depth}"

    result = fffc.compile(path, tmp_path / "m.fffc")
    (site,) = result.sites
    assert site.decision == "tree" and site.max_rel_err < 1e-5
    assert result.manifest["verification"]["kernels"][site.name]["ok"]  # the x86 kernel alone
    model = onnx.load(str(result.artifact / "model.onnx"))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["ScatterElements"] == 0 and ops["FastFeedForward"] == 1
    (fn,) = [f for f in model.functions if f.name == "FastFeedForward"]  # the walk, as fallback
    fn_ops = collections.Counter(n.op_type for n in fn.node)
    if 2 ** (depth + 1) - 1 >= MASKED_BELOW_RATIO * (depth + 1):  # deep: the walk
        assert fn_ops["Gather"] >= 2 * (depth + 1) and fn_ops["ScatterElements"] == 0
    else:  # wide and shallow: all nodes (one Gemm), the path mask, one MatMul
        assert fn_ops["ScatterElements"] == depth + 1 and fn_ops["Gemm"] == 1
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with_kernel = fffc.runtime.InferenceSession(result.artifact)
    stock = ort.InferenceSession(str(result.artifact / "model.onnx"),
                                 providers=["CPUExecutionProvider"])  # no fffc: the walk
    for b, s in ((1, 1), (3, 7)):
        x = np.random.default_rng(b * 10 + s).standard_normal((b, s, hidden)).astype(np.float32)
        want = original.run(None, {"x": x})[0]
        for sess in (with_kernel, stock):
            np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4,
                                       atol=1e-5 * np.abs(want).max())


def test_ge_tie_break_is_matched_exactly(tmp_path):
    """``z >= 0`` goes right (UltraFastBERT's benchmark code): tie_break "ge", exact also for
    a token whose root logit is exactly 0 (where "gt" would take the other child)."""
    fff = ge_tie_break_fff()
    module = GeqFFF(16, 16, 3, 2)
    module.load_state_dict(fff.state_dict())
    check_ge_tie_break(module, fff, tmp_path)


def test_fff_left_as_it_was_when_not_lowered(tmp_path):
    """A site not selected keeps the exported region node for node (its 'original')."""
    path = export_fff(FastFeedForward(16, 16, 3, 2), tmp_path / "m.onnx", False, 17)
    dummy = tmp_path / "with_relu.onnx"
    # add a ReLU FFN so that compile has a site to lower while the FFF is deselected
    m = onnx.load(str(path))
    rng = np.random.default_rng(0)
    h = onnx.helper
    m.graph.initializer.extend([onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
                                for n, s in (("Wa", (16, 32)), ("Wb", (32, 16)))])
    y = m.graph.output[0].name
    m.graph.node.extend([h.make_node("MatMul", [y, "Wa"], ["ra"]), h.make_node("Relu", ["ra"], ["rb"]),
                         h.make_node("MatMul", ["rb", "Wb"], ["y2"])])
    m.graph.output[0].name = "y2"
    onnx.save(m, str(dummy))
    sites = fffc.inspect(dummy).sites
    relu = next(s for s in sites if s.kind == "dense")
    result = fffc.compile(dummy, tmp_path / "out.fffc", fffc.CompileOptions(sites=(relu.name,)))
    fff = next(s for s in result.sites if s.kind == "fff")
    assert fff.decision == "dense"
    ops = collections.Counter(n.op_type for n in onnx.load(str(result.artifact / "model.onnx")).graph.node)
    assert ops["ScatterElements"] == 4 and ops["GatherElements"] == 3
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    want = ort.InferenceSession(str(dummy), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = fffc.runtime.InferenceSession(result.artifact).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fff_cuda_artifact_carries_the_kernel_and_checks_it_by_emulation(tmp_path):
    path = export_fff(FastFeedForward(32, 32, 4, 2), tmp_path / "m.onnx", True, 18)
    result = fffc.compile(path, tmp_path / "m.fffc", fffc.CompileOptions(target="cuda"))
    (site,) = result.sites
    (variant,) = [v for v in result.manifest["cuda"]["variants"]]
    assert variant["variant"] == "walk" and variant["launches"][0]["grid"][0] == "(1*N+0)//1"
    assert variant["launches"][0]["params"] == ["B_in", "W_in", "W_out", "X", "Y", "N"]
    assert result.manifest["verification"]["cuda_kernels"][site.name]["walk"]["ok"]
    x = np.random.default_rng(0).standard_normal((2, 3, 32)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = fffc.runtime.InferenceSession(result.artifact).run(None, {"x": x})[0]  # CPU kernels
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_tanh_gelu_region_is_refused_with_its_reason(tmp_path):
    """The rule reads the region and says what does not fit: with the tanh GELU it is no
    UltraFastBERT layer (its check fails with that reason, and it stays a near miss)."""
    torch.manual_seed(0)
    path = export_fff(FastFeedForward(16, 16, 3, 2), tmp_path / "m.onnx", True, 20)
    m = onnx.load(str(path))
    (gelu,) = [n for n in m.graph.node if n.op_type == "Gelu"]
    gelu.ClearField("attribute")
    gelu.attribute.append(onnx.helper.make_attribute("approximate", "tanh"))
    model = to_ir(m)
    passes.canonicalize(model)
    rule = ffn_fff.masked_fff_rule
    (root,) = [n for n in model.graph if rule.takes(n) and rule.reportable(n)]
    result = rule.check(root)
    assert not result
    assert result.reason == "FFF uses the exact erf GELU; got the tanh approximation"
    assert passes.detect(model) == []
    assert [m.reason for m in passes.near_misses(model)] == [f"FastFeedForward: {result.reason}"]


def test_site_inputs_hold_w_in_row_per_node(tmp_path):
    """The op's layout of the masked export's weights (``check_site_inputs``)."""
    torch.manual_seed(0)
    check_site_inputs(FastFeedForward(16, 16, 3, 2), tmp_path / "m.onnx")
