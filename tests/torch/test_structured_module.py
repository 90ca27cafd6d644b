"""``fffc.torch``'s structured linears (Wei et al. 2024): each equals its dense weight, the
self-guided blend goes from the guide to the structured path and trains, and both exporters
keep a dynamic token count that ONNX Runtime runs."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch  # the test extra installs torch==2.13.0

from fffc.torch import (
    BlockDenseLinear,
    BlockShuffleLinear,
    LowRankLinear,
    StructuredMLP,
    guide_schedule,
)

pytestmark = pytest.mark.torch
LAYERS = [
    lambda d_in, d_out, **kw: LowRankLinear(d_in, d_out, 8, **kw),
    lambda d_in, d_out, **kw: BlockDenseLinear(d_in, d_out, 8, 4, **kw),
    lambda d_in, d_out, **kw: BlockDenseLinear(d_in, d_out, 8, 4, form="einsum", **kw),
    lambda d_in, d_out, **kw: BlockShuffleLinear(d_in, d_out, 4, **kw),
]
IDS = ["lowrank", "blockdense-bmm", "blockdense-einsum", "blockshuffle"]


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
@pytest.mark.parametrize("d_in, d_out", [(16, 48), (48, 16), (32, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_equals_its_dense_weight(make, d_in, d_out, bias) -> None:
    torch.manual_seed(d_in + d_out)
    m = make(d_in, d_out, bias=bias)
    x = torch.randn(3, 5, d_in)
    with torch.no_grad():
        y = m(x)
        ref = x @ m.to_dense().T + (m.bias if bias else 0.0)
    assert y.shape == (3, 5, d_out) and m.to_dense().shape == (d_out, d_in)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x[0, 0]), ref[0, 0], rtol=1e-5, atol=1e-5)  # 1-D input


def test_blockdense_bmm_and_einsum_agree() -> None:
    torch.manual_seed(0)
    bmm = BlockDenseLinear(32, 24, 16, 4)
    ein = BlockDenseLinear(32, 24, 16, 4, form="einsum")
    ein.load_state_dict(bmm.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(bmm(x), ein(x), rtol=1e-5, atol=1e-6)


def test_lowrank_init_is_the_truncated_svd() -> None:
    torch.manual_seed(0)
    m = LowRankLinear(32, 24, 6)
    assert m.lr1.shape == (6, 32) and m.lr2.shape == (24, 6)
    assert torch.linalg.matrix_rank(m.to_dense()).item() == 6
    # U·sqrt(S) and sqrt(S)·Vh: the factors' Gram matrices are the same diagonal
    torch.testing.assert_close(m.lr2.T @ m.lr2, m.lr1 @ m.lr1.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_guide_blends_dense_and_structured(make) -> None:
    torch.manual_seed(1)
    m = make(16, 32, guided=True)
    assert m.guided and float(m.alpha) == 1.0
    x = torch.randn(4, 16)
    with torch.no_grad():
        m.guide.add_(0.1 * torch.randn_like(m.guide))  # make the two paths differ
        dense = x @ m.guide.T + m.bias
        structured = x @ m.to_dense().T + m.bias
        torch.testing.assert_close(m(x), dense, rtol=1e-5, atol=1e-5)
        m.set_guide(0.25)
        torch.testing.assert_close(m(x), 0.25 * dense + 0.75 * structured, rtol=1e-5, atol=1e-5)
        m.set_guide(0.0)
        torch.testing.assert_close(m(x), structured, rtol=1e-5, atol=1e-5)
    m.close_guide()
    names = {n for n, _ in m.named_parameters()}
    assert "guide" not in names and "guide" not in m.state_dict() and "alpha" not in m.state_dict()
    assert not m.guided
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), structured, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="guide"):
        m.set_guide(0.5)


def test_alpha_survives_state_dict_round_trip() -> None:
    torch.manual_seed(2)
    a = StructuredMLP(16, 32, "lowrank", rank=4, guided=True)
    a.set_guide(0.3)
    b = StructuredMLP(16, 32, "lowrank", rank=4, guided=True)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    x = torch.randn(5, 16)
    torch.testing.assert_close(a(x), b(x))
    assert b.fc1._alpha == pytest.approx(0.3) and b.fc2._alpha == pytest.approx(0.3)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_guide_schedule_goes_from_one_to_zero(kind) -> None:
    values = [guide_schedule(s, 100, kind) for s in range(0, 121)]
    assert values[0] == 1.0 and values[100] == pytest.approx(0.0, abs=1e-12)
    assert values[120] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in itertools.pairwise(values[:101]))  # strictly down
    assert guide_schedule(50, 100, kind) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="kind"):
        guide_schedule(0, 10, "step")


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
def test_self_guided_training_reduces_the_loss(kind) -> None:
    """Regress a dense teacher MLP; alpha follows the cosine schedule to 0 over the first 150
    of 200 steps, then the guide is closed: the structured-only loss must have dropped."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(),
                                  torch.nn.Linear(64, 16))
    m = StructuredMLP(16, 64, kind, rank=8, blocks=4, guided=True)
    x_test = torch.randn(256, 16)
    with torch.no_grad():
        y_test = teacher(x_test)

    def structured_loss() -> float:
        alpha = m.fc1._alpha if m.fc1.guided else None
        if alpha is not None:
            m.set_guide(0.0)
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(m(x_test), y_test).item()
        if alpha is not None:
            m.set_guide(alpha)
        return loss

    before = structured_loss()  # lowrank 0.26, blockdense 0.061, blockshuffle 0.16
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(200):
        m.set_guide(guide_schedule(step, 150))
        x = torch.randn(64, 16)
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.mse_loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.close_guide()
    after = structured_loss()  # 0.011, 0.019, 0.0085
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("kind, frac", [("dense", 1.0), ("lowrank", (8 * 80 * 2 + 80) / (2 * 1024 + 80)),
                                        ("blockdense", None), ("blockshuffle", None)])
def test_params_fraction(kind, frac) -> None:
    m = StructuredMLP(16, 64, kind, rank=8, blocks=4, guided=kind != "dense")
    dense = StructuredMLP(16, 64, "dense")
    expected = frac
    if expected is None:
        n = sum(p.numel() for n_, p in m.named_parameters() if "guide" not in n_)
        expected = n / sum(p.numel() for p in dense.parameters())
    assert m.params_fraction() == pytest.approx(expected)
    assert (m.params_fraction() < 1.0) == (kind != "dense")
    if kind == "blockdense":  # blkdiag 4·2·4 + lr 64·8, then 4·2·16 + 16·8, biases 64 + 16
        assert m.params_fraction() == pytest.approx((32 + 512 + 128 + 128 + 80) / 2128)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="multiples"):
        BlockDenseLinear(30, 16, 8, 4)
    with pytest.raises(ValueError, match="form"):
        BlockDenseLinear(32, 16, 8, 4, form="loop")
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(8, 16, 9)
    with pytest.raises(ValueError, match="kind"):
        StructuredMLP(16, 64, "butterfly")
    with pytest.raises(ValueError, match="activation"):
        StructuredMLP(16, 64, activation="swiglu")
    with pytest.raises(ValueError, match="guided"):
        StructuredMLP(16, 64, "dense", guided=True)
    assert StructuredMLP(64, 256, "blockdense", blocks=4).rank == 16


def _export(m: torch.nn.Module, x: torch.Tensor, path, dynamo: bool) -> None:
    if dynamo:
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
        kwargs = {"dynamic_shapes": {"x": dims}, "opset_version": 18}
    else:
        kwargs = {"dynamic_axes": {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}},
                  "opset_version": 17}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=dynamo, input_names=["x"],
                          output_names=["y"], **kwargs)


MLP_CASES = [("dense", "bmm"), ("lowrank", "bmm"), ("blockdense", "bmm"),
             ("blockdense", "einsum"), ("blockshuffle", "bmm")]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript17", "dynamo18"])
@pytest.mark.parametrize("kind, form", MLP_CASES, ids=[f"{k}-{f}" for k, f in MLP_CASES])
def test_exports_run_in_ort_at_other_token_counts(kind, form, dynamo, tmp_path) -> None:
    torch.manual_seed(3)
    act = {"dense": "gelu", "lowrank": "gelu_tanh", "blockdense": "relu"}.get(kind, "silu")
    m = StructuredMLP(32, 96, kind, rank=16, blocks=4, activation=act, form=form).eval()
    path = tmp_path / "mlp.onnx"
    _export(m, torch.randn(2, 5, 32), path, dynamo)
    model = onnx.load(str(path))
    if kind == "blockdense":
        ops = {n.op_type for n in model.graph.node}
        assert ("Einsum" in ops) == (form == "einsum")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(3, 11, 32), (1, 1, 32)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], m(x).numpy(),
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript17", "dynamo18"])
def test_closed_guide_is_not_exported(dynamo, tmp_path) -> None:
    torch.manual_seed(4)
    m = StructuredMLP(32, 96, "lowrank", rank=8, guided=True)
    m.set_guide(0.0)
    m.close_guide()
    path = tmp_path / "closed.onnx"
    _export(m.eval(), torch.randn(2, 5, 32), path, dynamo)
    model = onnx.load(str(path))
    sizes = [math.prod(i.dims) for i in model.graph.initializer]
    assert max(sizes) == 96 * 8  # lr2 of fc1 / lr1 of fc2, no 32×96 guide
