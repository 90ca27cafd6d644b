"""``SparseFFN`` mode=teal kernels (in-process) against the float64 thresholded reference:
every activation, dense and gated, with and without biases, thresholds on and off."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fffc.codegen.build import KernelRunner
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.verify.reference import sparse_ffn, teal_ffn

D, F, DO = 48, 128, 40


def _spec(activation: str, gated: bool, bias: bool = True, up: str = "none") -> SparseSpec:
    return SparseSpec(activation, up, "teal", D, F, DO, bias, bias, gated)


@functools.cache
def _runner(spec: SparseSpec) -> KernelRunner:
    return KernelRunner(spec)


def _weights(spec: SparseSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    w = {"W1": rng.standard_normal((D, F)) / np.sqrt(D), "B1": rng.standard_normal(F) * 0.1,
         "W2": rng.standard_normal((F, DO)) / np.sqrt(F), "B2": rng.standard_normal(DO),
         "WU": rng.standard_normal((D, F)) / np.sqrt(D)}  # teal: WU input-channel-major
    return {k: v.astype(np.float32) for k, v in w.items()}


def _run(spec: SparseSpec, w: dict, x: np.ndarray, th: np.ndarray) -> np.ndarray:
    args = [x, *[w[n] for n in spec.arg_names()[1:-2]], th]
    return _runner(spec)(*args)


def _want(spec: SparseSpec, w: dict, x: np.ndarray, th: np.ndarray) -> np.ndarray:
    return teal_ffn(x, w["W1"], w["B1"] if spec.has_b1 else None, w["W2"],
                    w["B2"] if spec.has_b2 else None, w["WU"] if spec.gated else None,
                    thresholds=th, activation_name=spec.activation,
                    up_activation=spec.up_activation)


CASES = [("gelu", False, True, "none"), ("gelu_tanh", False, False, "none"),
         ("relu", False, True, "none"), ("silu", True, False, "none"),
         ("gelu", True, True, "none"), ("relu", True, False, "relu")]


@pytest.mark.parametrize("activation, gated, bias, up", CASES,
                         ids=[f"{a}-{'gated' if g else 'dense'}-{'b' if b else 'nb'}-{u}"
                              for a, g, b, u in CASES])
def test_teal_kernel_matches_thresholded_reference(activation, gated, bias, up) -> None:
    spec = _spec(activation, gated, bias, up)
    w = _weights(spec)
    for tokens in (1, 3):
        x = np.random.default_rng(tokens).standard_normal((tokens, D)).astype(np.float32)
        a = np.abs(x @ w["W1"])  # a scale for the hidden threshold
        for th in ([-1.0, -1.0], [np.quantile(np.abs(x), 0.5), -1.0],
                   [-1.0, np.quantile(a, 0.3) * 0.2], [np.quantile(np.abs(x), 0.4), 0.05]):
            th = np.asarray(th, dtype=np.float32)
            want = _want(spec, w, x, th)
            got = _run(spec, w, x, th)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
            dense = sparse_ffn(x, w["W1"], w["B1"] if bias else None, w["W2"],
                               w["B2"] if bias else None, w["WU"].T if gated else None,
                               activation_name=activation, up_activation=up)
            # thresholds off: the dense FFN; on: something else (the skipping is real)
            assert np.allclose(got, dense, rtol=1e-4, atol=1e-4 * np.abs(dense).max()) == (
                th.max() < 0)


def test_teal_kernel_skips_everything_below_threshold() -> None:
    """All of x under t_in: Y is B2 exactly (no row of W1 or W2 contributes)."""
    spec = _spec("gelu", False)
    w = _weights(spec)
    x = np.random.default_rng(0).standard_normal((2, D)).astype(np.float32) * 0.01
    got = _run(spec, w, x, np.array([1.0, -1.0], np.float32))
    b = np.asarray(w["B1"], np.float64)
    gelu_b1 = 0.5 * b * (1 + np.vectorize(__import__("math").erf)(b / np.sqrt(2)))
    np.testing.assert_allclose(got, np.broadcast_to(gelu_b1 @ w["W2"] + w["B2"], got.shape),
                               rtol=1e-5, atol=1e-5)


def test_teal_rejects_unknown_activation() -> None:
    with pytest.raises(CodegenError, match="activation"):
        KernelRunner(SparseSpec("tanh", "none", "teal", D, F, DO, True, True, False))


def test_slack_covers_a_neuron_at_the_threshold_either_way() -> None:
    """A hidden entry at (float64) exactly t_hidden may be kept by a float32 implementation
    or dropped: the reference's slack accepts both outputs, and nothing more."""
    from fffc.verify.compare import compare

    spec = _spec("gelu", False)
    w = _weights(spec)
    x = np.random.default_rng(3).standard_normal((1, D)).astype(np.float32)
    h = x.astype(np.float64) @ w["W1"] + w["B1"]
    a = 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2)))
    i = int(np.argsort(np.abs(a[0]))[F // 2])  # a mid-sized entry becomes the threshold
    th = np.array([-1.0, np.float32(abs(a[0, i]))], np.float32)
    want, slack = _want_slack(spec, w, x, th)
    keep = a[0].copy()
    keep[np.abs(keep) < abs(a[0, i]) * (1 - 1e-9)] = 0.0
    drop = keep.copy()
    drop[i] = 0.0
    for variant in (keep, drop):
        y = variant @ w["W2"] + w["B2"]
        assert compare(y[None], want, 1e-6, slack).ok
    assert not compare((drop @ w["W2"] + w["B2"])[None] + 1e-3 * np.abs(want).max(),
                       want, 1e-6, slack).ok


def _want_slack(spec: SparseSpec, w: dict, x: np.ndarray, th: np.ndarray):
    return teal_ffn(x, w["W1"], w["B1"], w["W2"], w["B2"], None, thresholds=th,
                    activation_name=spec.activation, slack=True)


def test_skipped_rows_are_never_read() -> None:
    """NaN in the rows of W1 of inputs under t_in and of W2 of hidden entries under
    t_hidden: the output stays finite and equal to the reference."""
    spec = _spec("gelu", False)
    w = _weights(spec)
    x = np.random.default_rng(4).standard_normal((1, D)).astype(np.float32)
    th = np.array([0.6, 0.05], np.float32)
    want = _want(spec, w, x, th)
    small = np.abs(x[0]) <= th[0]
    h = np.where(small, 0.0, x[0].astype(np.float64)) @ w["W1"] + w["B1"]
    quiet = np.abs(0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2)))) <= th[1]
    assert 0 < small.sum() < D and 0 < quiet.sum() < F
    poisoned = {k: v.copy() for k, v in w.items()}
    poisoned["W1"][small] = np.nan
    poisoned["W2"][quiet] = np.nan
    got = _run(spec, poisoned, x, th)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


CENTERED = [("gelu", False, True, "xh"), ("gelu", False, False, "h"), ("gelu_tanh", False, True, "x"),
            ("silu", True, False, "h")]


@pytest.mark.parametrize("activation, gated, bias, centers", CENTERED,
                         ids=[f"{a}-{'gated' if g else 'dense'}-{'b' if b else 'nb'}-{c}"
                              for a, g, b, c in CENTERED])
def test_centered_teal_kernel_replaces_entries_near_their_center(activation, gated, bias,
                                                                 centers) -> None:
    """XC / HC with B1 / B2 holding their share (``lower.fold_centers``): the kernel equals
    the FFN whose entries within t of their channel's center were set to the center,
    computed here from the original weights (no XC, HC or folding)."""
    from math import erf

    from fffc.passes.lowering import fold_centers

    base = _spec(activation, gated, bias)
    spec = SparseSpec(activation, "none", "teal", D, F, DO,
                      bias or "x" in centers, bias or "h" in centers, gated,
                      centers=centers)
    assert spec.arg_names()[-1 - len(centers):-1] == [f"{p.upper()}C" for p in centers]
    w = _weights(base)
    rng = np.random.default_rng(11)
    xc = (rng.standard_normal(D) * 0.8).astype(np.float32) if "x" in centers else None
    hc = (rng.standard_normal(F) * 0.1 - 0.1).astype(np.float32) if "h" in centers else None
    b1, b2 = (w["B1"], w["B2"]) if bias else (None, None)
    f1, f2 = fold_centers(w["W1"], b1, w["W2"], b2, (xc, hc))
    folded = {**w, "B1": f1, "B2": f2, "XC": xc, "HC": hc}
    act = {"gelu": lambda v: 0.5 * v * (1 + np.vectorize(erf)(v / np.sqrt(2))),
           "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3))),
           "silu": lambda v: v / (1 + np.exp(-v))}[activation]
    for tokens in (1, 3):
        x = (rng.standard_normal((tokens, D)) + (xc if xc is not None else 0)).astype(np.float32)
        th = np.array([0.6, 0.05], np.float32)
        args = {**folded, "TH": th}
        got = _runner(spec)(x, *[args[n] for n in spec.arg_names()[1:-1]])
        # the reference: replace, from the original weights, in float64
        cx = np.zeros(D) if xc is None else xc.astype(np.float64)
        xr = np.where(np.abs(x - cx) <= th[0], cx, x.astype(np.float64))
        h = xr @ w["W1"] + (w["B1"] if bias else 0)
        a = act(h) * (xr @ w["WU"] if gated else 1)
        ch = np.zeros(F) if hc is None else hc.astype(np.float64)
        ar = np.where(np.abs(a - ch) <= th[1], ch, a)
        want = ar @ w["W2"] + (w["B2"] if bias else 0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        # and the op's own reference (what verify compares kernels with)
        ref = teal_ffn(x, folded["W1"], f1, w["W2"], f2, w["WU"] if gated else None,
                       thresholds=th, activation_name=activation, xc=xc, hc=hc)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        # the center matters: the same thresholds around zero compute something else
        plain = teal_ffn(x, w["W1"], b1, w["W2"], b2, w["WU"] if gated else None,
                         thresholds=th, activation_name=activation)
        assert not np.allclose(got, plain, rtol=1e-3, atol=1e-3 * np.abs(plain).max())


def test_centers_need_mode_teal_and_xc_a_dense_ffn() -> None:
    for spec in (SparseSpec("silu", "none", "teal", D, F, DO, False, True, True,
                            centers="xh"),
                 SparseSpec("silu", "none", "cats", D, F, DO, False, True, True,
                            centers="h")):
        with pytest.raises(CodegenError, match="centers"):
            KernelRunner(spec)
