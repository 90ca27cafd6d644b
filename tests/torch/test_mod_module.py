"""``fffc.torch.MoDFFN``: the top-k combine equals a per-token loop, the causal predictor learns
top-k membership, and both exporters give a static-k graph ONNX Runtime runs."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch  # the test extra installs torch==2.13.0

from fffc.torch import MoDFFN

pytestmark = pytest.mark.torch


def _mod(d: int = 16, d_ff: int = 48, capacity: float = 0.25, combine: str = "paper",
         seed: int = 0) -> MoDFFN:
    torch.manual_seed(seed)
    ffn = torch.nn.Sequential(torch.nn.Linear(d, d_ff), torch.nn.ReLU(), torch.nn.Linear(d_ff, d))
    m = MoDFFN(ffn, d, capacity=capacity, combine=combine)
    with torch.no_grad():  # non-trivial router and predictor
        m.router.weight.normal_()
        m.aux.weight.normal_()
    return m.eval()


def _reference(m: MoDFFN, x: np.ndarray, routed: np.ndarray) -> np.ndarray:
    """Per token: routed ones get x + r·Δ ("paper") or x + r·(x + Δ) ("residual_block")."""
    w1, b1 = (t.detach().numpy() for t in (m.ffn[0].weight, m.ffn[0].bias))
    w2, b2 = (t.detach().numpy() for t in (m.ffn[2].weight, m.ffn[2].bias))
    wr = m.router.weight.detach().numpy()[0]
    y = x.copy()
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if routed[b, t]:
                xt = x[b, t]
                delta = np.maximum(xt @ w1.T + b1, 0.0) @ w2.T + b2
                r = float(xt @ wr)
                y[b, t] = xt + r * (delta if m.combine == "paper" else xt + delta)
    return y


@pytest.mark.parametrize("combine", ["paper", "residual_block"])
@pytest.mark.parametrize("seq, capacity, k", [(16, 0.25, 4), (10, 0.125, 1), (7, 1.0, 7)])
def test_forward_equals_the_per_token_loop(combine, seq, capacity, k) -> None:
    m = _mod(capacity=capacity, combine=combine, seed=seq)
    x = torch.randn(3, seq, 16)
    r = (x @ m.router.weight[0]).detach().numpy()
    routed = np.zeros_like(r, dtype=bool)
    for b in range(3):
        routed[b, np.argsort(-r[b])[:k]] = True
    assert m.k(seq) == k
    np.testing.assert_array_equal(m.topk_mask(x).numpy(), routed)
    with torch.no_grad():
        y = m(x).numpy()
    np.testing.assert_allclose(y, _reference(m, x.numpy(), routed), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[~routed], x.numpy()[~routed])  # skipped tokens untouched


@pytest.mark.parametrize("combine", ["paper", "residual_block"])
def test_forward_causal_routes_by_the_predictor(combine) -> None:
    m = _mod(combine=combine, seed=5)
    x = torch.randn(2, 12, 16)
    routed = (m.aux(x).squeeze(-1) > 0).detach().numpy()
    assert 0 < routed.sum() < routed.size
    with torch.no_grad():
        y = m.forward_causal(x).numpy()
        np.testing.assert_allclose(y, _reference(m, x.numpy(), routed), rtol=1e-5, atol=1e-5)
        m.aux.bias.fill_(-1e4)  # nothing routed: identity
        torch.testing.assert_close(m.forward_causal(x), x)


def test_gradients_reach_router_and_ffn() -> None:
    m = _mod(seed=6).train()
    m(torch.randn(2, 16, 16)).square().sum().backward()
    assert m.router.weight.grad.abs().sum() > 0 and m.ffn[0].weight.grad.abs().sum() > 0
    assert m.aux.weight.grad is None  # the predictor only learns from aux_loss


def test_aux_loss_decreases_with_a_fixed_router() -> None:
    m = _mod(seed=7).train()
    m.aux.reset_parameters()
    router = m.router.weight.detach().clone()
    opt = torch.optim.Adam(m.aux.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        loss = m.aux_loss(torch.randn(8, 32, 16, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert m.router.weight.grad is None and torch.equal(m.router.weight, router)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)  # ~0.63 → ~0.2
    x = torch.randn(64, 32, 16, generator=gen)
    with torch.no_grad():
        agree = ((m.aux(x).squeeze(-1) > 0) == m.topk_mask(x)).float().mean().item()
    assert agree > 0.9  # chance (all "skip") is 0.75


@pytest.mark.parametrize("dynamo, opset", [(False, 17), (True, 18)])
@pytest.mark.parametrize("combine", ["paper", "residual_block"])
def test_static_exports_run_in_ort(dynamo, opset, combine, tmp_path) -> None:
    m = _mod(d=32, d_ff=64, capacity=0.25, combine=combine, seed=8)
    x = torch.randn(2, 16, 32)
    path = tmp_path / "mod.onnx"
    kwargs = ({"dynamic_shapes": {"x": {0: torch.export.Dim("batch")}}} if dynamo
              else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=dynamo, opset_version=opset,
                          input_names=["x"], output_names=["y"], **kwargs)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["TopK"] == 2 and ops["GatherElements"] == 2 and ops["ScatterElements"] == 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 5):  # same sequence length (k is static), other batch sizes
        x2 = torch.randn(batch, 16, 32)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {"x": x2.numpy()})[0], m(x2).numpy(),
                                       rtol=1e-5, atol=1e-5)


def test_dynamic_sequence_export_computes_k(tmp_path) -> None:
    """With a dynamic sequence axis the dynamo export computes k from S (no k baked from
    the example input): ORT equals the module at every length."""
    m = _mod(d=32, d_ff=64, capacity=0.25, combine="paper", seed=9)
    path = tmp_path / "mod.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 16, 32),), str(path), dynamo=True,
                          opset_version=18, input_names=["x"], output_names=["y"],
                          dynamic_shapes={"x": dims})
    g = onnx.load(str(path)).graph
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant"
                                                   for o in n.output}
    assert g.node[[n.op_type for n in g.node].index("TopK")].input[1] not in constants
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seq in (3, 16, 20, 33):
        x = torch.randn(2, seq, 32)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], m(x).numpy(),
                                       rtol=1e-5, atol=1e-5, err_msg=f"S={seq}")


def test_constructor_checks() -> None:
    ffn = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match="combine"):
        MoDFFN(ffn, 8, combine="gated")
    with pytest.raises(ValueError, match="capacity"):
        MoDFFN(ffn, 8, capacity=0.0)
