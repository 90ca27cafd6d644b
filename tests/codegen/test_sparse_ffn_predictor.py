"""``SparseFFN`` mode=predictor kernels (in-process) against the float64 reference: only
neurons with a positive predictor score contribute; every activation, dense and gated."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fffc.codegen.build import KernelRunner
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.verify.reference import predictor_ffn, sparse_ffn

D, F, DO, R = 48, 128, 40, 16


def _spec(activation: str, gated: bool, bias: bool = True, up: str = "none",
          rank: int = R) -> SparseSpec:
    return SparseSpec(activation, up, "predictor", D, F, DO, bias, bias, gated,
                      rank=rank)


@functools.cache
def _runner(spec: SparseSpec) -> KernelRunner:
    return KernelRunner(spec)


def _weights(shift: float) -> dict[str, np.ndarray]:
    """W1/WU row per neuron; ``shift`` moves the predictor offsets (fewer/more selected)."""
    rng = np.random.default_rng(11)
    w = {"W1": rng.standard_normal((F, D)) / np.sqrt(D), "B1": rng.standard_normal(F) * 0.1,
         "W2": rng.standard_normal((F, DO)) / np.sqrt(F), "B2": rng.standard_normal(DO),
         "WU": rng.standard_normal((F, D)) / np.sqrt(D),
         "PA": rng.standard_normal((D, R)) / np.sqrt(D),
         "PB": rng.standard_normal((R, F)) / np.sqrt(R), "PC": rng.standard_normal(F) + shift}
    return {k: v.astype(np.float32) for k, v in w.items()}


CASES = [("gelu", False, True, "none"), ("silu", True, False, "none"),
         ("relu", True, False, "relu"), ("gelu_tanh", False, False, "none")]


@pytest.mark.parametrize("activation, gated, bias, up", CASES,
                         ids=[f"{a}-{'gated' if g else 'dense'}-{u}" for a, g, _, u in CASES])
@pytest.mark.parametrize("shift", [-1.5, 0.0, 50.0])  # ~10%, ~50%, all neurons selected
def test_predictor_kernel_matches_reference(activation, gated, bias, up, shift) -> None:
    spec = _spec(activation, gated, bias, up)
    w = _weights(shift)
    x = np.random.default_rng(2).standard_normal((3, D)).astype(np.float32)
    got = _runner(spec)(x, *[w[n] for n in spec.arg_names()[1:-1]])
    b1, b2 = (w["B1"], w["B2"]) if bias else (None, None)
    want, slack = predictor_ffn(x, w["W1"], b1, w["W2"], b2, w["WU"] if gated else None,
                                w["PA"], w["PB"], w["PC"], activation_name=activation,
                                up_activation=up, slack=True)
    assert not slack.any()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    dense = sparse_ffn(x, w["W1"].T, b1, w["W2"], b2, w["WU"] if gated else None,
                       activation_name=activation, up_activation=up)
    selected = ((x @ w["PA"]) @ w["PB"] + w["PC"] > 0).mean()
    # all selected: the dense FFN; fewer: something else (the skipping is real)
    assert (selected == 1.0) == np.allclose(got, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max())


def test_rank_is_part_of_the_spec() -> None:
    with pytest.raises(CodegenError, match="rank"):
        KernelRunner(_spec("gelu", False, rank=0))
    assert _spec("gelu", False).arg_names() == ["X", "W1", "B1", "W2", "B2", "PA", "PB", "PC", "Y"]


def test_unselected_rows_are_never_read() -> None:
    """NaN in the rows of W1, WU and W2 of every neuron the predictor leaves out."""
    spec = _spec("silu", True, False)
    w = _weights(-1.0)
    x = np.random.default_rng(6).standard_normal((1, D)).astype(np.float32)
    out = ((x @ w["PA"]) @ w["PB"] + w["PC"])[0] <= 0
    assert 0 < out.sum() < F
    want = predictor_ffn(x, w["W1"], None, w["W2"], None, w["WU"], w["PA"], w["PB"], w["PC"],
                         activation_name="silu")
    poisoned = {k: v.copy() for k, v in w.items()}
    for k in ("W1", "WU", "W2"):
        poisoned[k][out] = np.nan
    got = _runner(spec)(x, *[poisoned[n] for n in spec.arg_names()[1:-1]])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
