"""``fffc.torch.FastFeedForward``: the released training form equals the conditional walk and
fffc's reference; both exporters produce the masked graph fffc will detect."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch  # the test extra installs torch==2.13.0

from fffc.torch import FastFeedForward, swap_ffn
from fffc.verify.reference import fast_feed_forward

pytestmark = pytest.mark.torch
SHAPES = [(32, 1, 11), (24, 4, 3), (16, 128, 4)]  # (hidden, trees, depth): 1x11, 4x3, 128x4


@pytest.mark.parametrize("hidden, trees, depth", SHAPES)
def test_training_form_equals_walk_and_reference(hidden, trees, depth) -> None:
    torch.manual_seed(trees + depth)
    m = FastFeedForward(hidden, hidden + 8, depth, trees).eval()
    x = torch.randn(3, 7, hidden)
    with torch.no_grad():
        masked = m(x)
    walk = m.forward_walk(x)
    assert masked.shape == (3, 7, hidden + 8)
    torch.testing.assert_close(masked, walk, rtol=1e-5, atol=1e-6)
    ref = fast_feed_forward(x.numpy(), m.linear_in.weight.detach().numpy(),
                            m.linear_in.bias.detach().numpy(),
                            m.linear_out.weight.detach().numpy().T, trees=trees, depth=depth)
    np.testing.assert_allclose(walk.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_only_visited_nodes_get_gradients() -> None:
    torch.manual_seed(0)
    m = FastFeedForward(8, 8, 3, 2)
    m(torch.randn(1, 8)).sum().backward()
    rows = (m.linear_out.weight.grad.abs().sum(0) > 0).sum().item()
    assert rows == 2 * (3 + 1)  # D+1 nodes per tree


@pytest.mark.parametrize("dynamo, opset", [(False, 17), (True, 18)])
def test_exports_hold_the_masked_form(dynamo, opset, tmp_path) -> None:
    torch.manual_seed(1)
    m = FastFeedForward(32, 32, 3, 2).eval()
    x = torch.randn(2, 5, 32)
    path = tmp_path / "fff.onnx"
    kwargs = ({"dynamic_shapes": {"x": {0: torch.export.Dim("b"), 1: torch.export.Dim("s")}}}
              if dynamo else {"dynamic_axes": {"x": {0: "b", 1: "s"}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=dynamo, opset_version=opset,
                          input_names=["x"], output_names=["y"], **kwargs)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["ScatterElements"] == 3 + 1 and ops["GatherElements"] == 3 and ops["Greater"] == 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(3, 4, 32)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"x": x2.numpy()})[0], m(x2).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_swap_ffn_keeps_widths() -> None:
    block = torch.nn.Module()
    block.ffn = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                    torch.nn.Linear(64, 12))
    fff = swap_ffn(block, "ffn", depth=4)
    assert block.ffn is fff and (fff.input_width, fff.output_width, fff.depth) == (16, 12, 4)
    assert fff(torch.randn(2, 16)).shape == (2, 12)


def test_eval_form_walk_runs_the_walk_only_in_eval_mode() -> None:
    torch.manual_seed(2)
    m = FastFeedForward(16, 16, 3, 2, eval_form="walk")
    x = torch.randn(4, 16)
    m(x).sum().backward()  # training: the masked form (the walk has no gradients)
    assert m.linear_out.weight.grad is not None
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_walk(x))
        m.eval_form = "masked"
        torch.testing.assert_close(m(x), m.forward_walk(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="eval_form"):
        FastFeedForward(16, 16, 3, eval_form="hard")
