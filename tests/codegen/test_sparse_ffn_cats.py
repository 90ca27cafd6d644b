"""``SparseFFN`` mode=cats kernels (in-process) against the float64 reference, and proof
that closed gates' rows of WU and W2 (and skipped inputs' rows of W1) are never read."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fffc.codegen.build import KernelRunner
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.verify.compare import compare
from fffc.verify.reference import activation, cats_ffn

D, F, DO = 48, 128, 40


def _spec(act: str, up: str = "none", bias: bool = False) -> SparseSpec:
    return SparseSpec(act, up, "cats", D, F, DO, bias, bias, True)


@functools.cache
def _runner(spec: SparseSpec) -> KernelRunner:
    return KernelRunner(spec)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    w = {"W1": rng.standard_normal((D, F)) / np.sqrt(D), "B1": rng.standard_normal(F) * 0.1,
         "W2": rng.standard_normal((F, DO)) / np.sqrt(F), "B2": rng.standard_normal(DO),
         "WU": rng.standard_normal((F, D)) / np.sqrt(D)}  # cats: WU row per neuron
    return {k: v.astype(np.float32) for k, v in w.items()}


def _args(spec: SparseSpec, w: dict, x: np.ndarray, th: np.ndarray) -> list[np.ndarray]:
    return [x, *[w[n] for n in spec.arg_names()[1:-2]], th]


@pytest.mark.parametrize("act, up, bias", [("silu", "none", False), ("gelu", "none", True),
                                           ("relu", "relu", False)])
@pytest.mark.parametrize("th", [(-1.0, -1.0), (-1.0, 0.2), (0.5, -1.0), (0.4, 0.1)])
def test_cats_kernel_matches_reference(act, up, bias, th) -> None:
    spec, w = _spec(act, up, bias), _weights()
    x = np.random.default_rng(1).standard_normal((3, D)).astype(np.float32)
    th = np.asarray(th, np.float32)
    got = _runner(spec)(*_args(spec, w, x, th))
    want, slack = cats_ffn(x, w["W1"], w["B1"] if bias else None, w["W2"],
                           w["B2"] if bias else None, w["WU"], thresholds=th,
                           activation_name=act, up_activation=up, slack=True)
    assert compare(got, want, 1e-5, slack).ok


def test_closed_gates_and_small_inputs_are_never_read() -> None:
    """NaN in every row the thresholds skip (W1 rows of small inputs, WU and W2 rows of
    closed gates): the output stays finite and equal to the reference."""
    spec, w = _spec("silu"), _weights()
    x = np.random.default_rng(2).standard_normal((1, D)).astype(np.float32)
    th = np.array([0.5, 0.15], np.float32)
    small = np.abs(x[0]) <= th[0]
    xz = np.where(small, 0.0, x[0].astype(np.float64))
    closed = np.abs(activation("silu", xz @ w["W1"])) <= th[1]
    assert 0 < small.sum() < D and 0 < closed.sum() < F
    want = cats_ffn(x, w["W1"], None, w["W2"], None, w["WU"], thresholds=th,
                    activation_name="silu")
    poisoned = {k: v.copy() for k, v in w.items()}
    poisoned["W1"][small] = np.nan
    poisoned["WU"][closed] = np.nan
    poisoned["W2"][closed] = np.nan
    got = _runner(spec)(*_args(spec, poisoned, x, th))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_cats_needs_a_gated_ffn() -> None:
    with pytest.raises(CodegenError, match="gated"):
        KernelRunner(SparseSpec("silu", "none", "cats", D, F, DO, False, False, False))
