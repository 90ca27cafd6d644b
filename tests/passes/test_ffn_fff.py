"""UltraFastBERT FFF layers in real exports: detected with their K and D, lowered to the
conditional walk in standard ops, equal to the original in ONNX Runtime (issue 3)."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import fffc
import fffc.runtime
from fffc.passes.standard_forms import MASKED_BELOW_RATIO
from fffc.torch import FastFeedForward
from fffc.verify.reference import fast_feed_forward

pytestmark = pytest.mark.torch


class _GeqFFF(FastFeedForward):
    """The benchmark code's tie-break (``>= 0``): must not be taken for ``> 0``."""

    def forward(self, x):
        logits = self.linear_in(x)
        decisions = (logits >= 0).long().view(-1, self.trees, self.n_nodes)
        act = torch.nn.functional.gelu(logits).view(-1, self.trees, self.n_nodes)
        current = torch.zeros(x.shape[0], self.trees, dtype=torch.long)
        mask = torch.zeros_like(act)
        mask.scatter_(2, current.unsqueeze(-1), 1.0)
        for _ in range(self.depth):
            moves = torch.gather(decisions, 2, current.unsqueeze(2)).squeeze(2)
            current = current * 2 + 1 + moves
            mask.scatter_(2, current.unsqueeze(-1), 1.0)
        return self.linear_out((act * mask).flatten(1, 2))


def _export(module, path, dynamo: bool, opset: int, rank: int = 3):
    torch.manual_seed(0)
    x = torch.randn(*(2, 5)[: rank - 1], module.input_width)
    dims = {0: "b", 1: "s"} if rank == 3 else {0: "b"}
    kwargs = ({"dynamic_shapes": {"x": {k: torch.export.Dim(v) for k, v in dims.items()}}}
              if dynamo else {"dynamic_axes": {"x": dims}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=dynamo, opset_version=opset,
                          input_names=["x"], output_names=["y"], **kwargs)
    return path


@pytest.mark.parametrize("hidden, trees, depth, dynamo, opset", [
    (32, 1, 11, False, 17), (32, 1, 11, True, 18), (24, 4, 3, False, 20), (24, 4, 3, True, 20),
    (16, 128, 4, False, 17)])
def test_fff_export_is_detected_and_compiled(hidden, trees, depth, dynamo, opset, tmp_path):
    torch.manual_seed(trees)
    path = _export(FastFeedForward(hidden, hidden, depth, trees), tmp_path / "m.onnx", dynamo, opset)
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


class _Walk(torch.nn.Module):
    """The hard walk of a FastFeedForward with a given index update (default: the right one)."""

    def __init__(self, fff, step=lambda j, z: j * 2 + 1 + (z > 0).long()):
        super().__init__()
        self.fff, self.step, self.input_width = fff, step, fff.input_width

    def forward(self, x):
        f = self.fff
        x = x.reshape(-1, f.input_width)
        w_out = f.linear_out.weight.t()
        y = torch.zeros(x.shape[0], f.output_width)
        for k in range(f.trees):
            j = torch.zeros(x.shape[0], dtype=torch.long)
            for _ in range(f.depth + 1):
                r = k * f.n_nodes + j
                z = (x * f.linear_in.weight[r]).sum(-1) + f.linear_in.bias[r]
                y = y + torch.nn.functional.gelu(z).unsqueeze(-1) * w_out[r]
                j = self.step(j, z)
        return y


@pytest.mark.parametrize("hidden, trees, depth, dynamo, opset", [
    (32, 1, 11, False, 17), (32, 1, 11, True, 18), (24, 4, 3, False, 20), (24, 4, 3, True, 20),
    (16, 16, 2, True, 18)])
def test_hard_walk_export_is_detected_and_compiled(hidden, trees, depth, dynamo, opset, tmp_path):
    """``forward_walk`` exported (eval_form="walk"): an unrolled chain of row gathers, dot
    products and index updates per tree and level, found with its K and D."""
    torch.manual_seed(trees)
    fff = FastFeedForward(hidden, hidden, depth, trees, eval_form="walk")
    path = _export(fff, tmp_path / "m.onnx", dynamo, opset)
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
    walk = _Walk(FastFeedForward(16, 16, 3, 2), step)
    found = fffc.inspect(_export(walk, tmp_path / "w.onnx", False, 17))
    assert found.sites == []
    assert any(reason in m.reason for m in found.near_misses), found.near_misses


@pytest.mark.parametrize("form", ["masked", "walk"])
def test_ge_tie_break_is_matched_exactly(form, tmp_path):
    """``z >= 0`` goes right (UltraFastBERT's benchmark code): tie_break "ge", exact also for
    a token whose root logit is exactly 0 (where "gt" would take the other child)."""
    torch.manual_seed(3)
    fff = FastFeedForward(16, 16, 3, 2)
    with torch.no_grad():
        fff.linear_in.bias[0] = 0.0  # tree 0's root: z = 0 for the zero token
    if form == "masked":
        module = _GeqFFF(16, 16, 3, 2)
        module.load_state_dict(fff.state_dict())
    else:
        module = _Walk(fff, lambda j, z: j * 2 + 1 + (z >= 0).long())
    path = _export(module, tmp_path / "geq.onnx", False, 17, rank=2)
    (site,) = fffc.inspect(path).sites
    assert (site.tie_break, site.trees, site.depth) == ("ge", 2, 3)
    result = fffc.compile(path, tmp_path / "geq.fffc")
    (node,) = [n for n in onnx.load(str(result.artifact / "model.onnx")).graph.node
               if n.op_type == "FastFeedForward"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["tie_break"] == b"ge"
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    x[2] = 0.0
    want = module.eval()(torch.from_numpy(x)).detach().numpy()
    w = fff.linear_in.weight.detach().numpy(), fff.linear_in.bias.detach().numpy()
    w_out = fff.linear_out.weight.detach().numpy().T
    gt = fast_feed_forward(x, *w, w_out, trees=2, depth=3, tie_break="gt")
    assert np.abs(gt[2] - want[2]).max() > 1e-3  # the zero token tells the tie-breaks apart
    for sess in (fffc.runtime.InferenceSession(result.artifact),
                 ort.InferenceSession(str(result.artifact / "model.onnx"),
                                      providers=["CPUExecutionProvider"])):
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-6)


def test_fff_left_as_it_was_when_not_lowered(tmp_path):
    """A site not selected keeps the exported region node for node (its 'original')."""
    path = _export(FastFeedForward(16, 16, 3, 2), tmp_path / "m.onnx", False, 17)
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
    path = _export(FastFeedForward(32, 32, 4, 2), tmp_path / "m.onnx", True, 18)
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
