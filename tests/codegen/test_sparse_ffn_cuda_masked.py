"""CUDA kernels of SparseFFN modes teal, cats and predictor, without a GPU: nvcc builds
them, the CPU emulator runs every launch, the float64 references of ``fffc.verify.reference``
judge. Thresholds sit in wide gaps of the values they cut, so float32 rounding cannot move
a neuron across the cut; the predictor's offsets keep every score far from 0."""

from __future__ import annotations

import numpy as np
import pytest

from fffc.codegen.cuda_build import CudaVariant, build_cuda_library
from fffc.codegen.schedules import family
from fffc.contract.errors import CodegenError
from fffc.contract.kernels import SparseSpec
from fffc.contract.tolerances import RTOL
from fffc.verify.cuda_emu import Emulator
from fffc.verify.reference import activation, cats_ffn, predictor_ffn, sparse_ffn, teal_ffn

D, F, DO = 40, 100, 24  # odd dims: no tile divides them

TEAL_DENSE = SparseSpec("gelu", "none", "teal", D, F, DO, True, True, False)
TEAL_SWIGLU = SparseSpec("silu", "none", "teal", D, F, DO, False, True, True)
CATS = SparseSpec("silu", "none", "cats", D, F, DO, True, True, True)
PRED_DENSE = SparseSpec("gelu", "none", "predictor", 300, F, DO, True, True, False,
                        rank=8)  # d_in 300: x·PA split over 2 blocks
PRED_SWIGLU = SparseSpec("silu", "none", "predictor", D, F, DO, False, False, True,
                         rank=16)
# centered teal: XC, HC subtracted before the thresholds (random here; the biases need not
# hold their share for the kernel to be checked against the op's reference)
TEAL_CENTERED = SparseSpec("gelu", "none", "teal", D, F, DO, True, True, False,
                           centers="xh")
TEAL_SWIGLU_H = SparseSpec("silu", "none", "teal", D, F, DO, False, True, True,
                           centers="h")
SPECS = [TEAL_DENSE, TEAL_SWIGLU, CATS, PRED_DENSE, PRED_SWIGLU, TEAL_CENTERED, TEAL_SWIGLU_H]
TOKENS = (1, 3)  # the grids run over tokens: any count is served


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_cuda_library(SPECS, family("cuda"), tmp_path_factory.mktemp("cuda_masked"))


@pytest.fixture(scope="module")
def emulator(library):
    return Emulator(library.source_path.read_text(), library.variants)


def _variant(library, s: SparseSpec) -> CudaVariant:
    (v,) = [v for v in library.variants if v.spec == s]
    return v


def _weights(s: SparseSpec, seed: int) -> dict[str, np.ndarray]:
    """The op's inputs in the mode's layouts (teal: WU [d_in, d_ff]; cats: WU row per
    neuron; predictor: W1 and WU row per neuron)."""
    rng = np.random.default_rng(seed)
    d, f, do = s.d_in, s.d_ff, s.d_out
    w1 = rng.standard_normal((d, f)) / np.sqrt(d)
    w = {"W1": w1.T if s.mode == "predictor" else w1, "B1": rng.standard_normal(f) * 0.1,
         "W2": rng.standard_normal((f, do)) / np.sqrt(f), "B2": rng.standard_normal(do)}
    if s.gated:
        wu = rng.standard_normal((f, d)) / np.sqrt(d)
        w["WU"] = wu.T if s.mode == "teal" else wu
    if "x" in s.centers:
        w["XC"] = rng.standard_normal(d) * 0.5
    if "h" in s.centers:
        w["HC"] = rng.standard_normal(f) * 0.05 - 0.05
    if s.mode == "predictor":
        w |= {"PA": rng.standard_normal((d, s.rank)) / np.sqrt(d),
              "PB": rng.standard_normal((s.rank, f)) / np.sqrt(s.rank),
              "PC": rng.standard_normal(f) - 0.5}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()
            if k in s.arg_names()}


def _cut(values: np.ndarray, q: float, margin: float = 2e-4) -> np.float32:
    """A threshold near the ``q`` quantile of ``values``, in the middle of the widest gap
    among its neighbours: more than ``margin`` × the largest value (10× the reference's
    TEAL_BAND) from every one of them (float32 x is compared exactly: margin 0 there)."""
    v = np.unique(np.asarray(values, np.float64).ravel())
    i = int(q * (len(v) - 1))
    r = max(12, len(v) // 6)  # search ±1/6 of the values for the widest gap
    lo, hi = max(0, i - r), min(len(v) - 1, i + r)
    j = lo + int(np.argmax(np.diff(v[lo:hi + 1])))
    t = np.float32((v[j] + v[j + 1]) / 2)
    assert np.abs(v - float(t)).min() > margin * v.max(), "no clean cut here"
    return t


def _centered_x(w: dict, x: np.ndarray) -> np.ndarray:
    """x - XC in float32 (as the kernels), or x."""
    return x - w["XC"] if "XC" in w else x


def _x_cut(x: np.ndarray, t_in: float) -> np.ndarray:
    xd = x.astype(np.float64)
    return np.where(np.abs(xd) <= t_in, 0.0, xd)


def _hidden(s: SparseSpec, w: dict, x: np.ndarray, t_in: float) -> np.ndarray:
    """What the hidden (teal, minus HC) or gate (cats) threshold cuts, in float64."""
    xd = _x_cut(_centered_x(w, x), t_in)
    h = xd @ w["W1"] + w.get("B1", 0.0)
    a = activation(s.activation, h)
    if s.mode == "teal" and s.gated:
        a = a * activation(s.up_activation, xd @ w["WU"])
    return a - w["HC"] if "HC" in w else a


def _want(s: SparseSpec, w: dict, x: np.ndarray, th: np.ndarray | None = None) -> np.ndarray:
    """The reference, and that no neuron lies within rounding of a cut (slack 0)."""
    common = {"activation_name": s.activation, "up_activation": s.up_activation, "slack": True}
    b1, b2 = w.get("B1"), w.get("B2")
    if s.mode == "teal":
        y, slack = teal_ffn(x, w["W1"], b1, w["W2"], b2, w.get("WU"), thresholds=th,
                            xc=w.get("XC"), hc=w.get("HC"), **common)
    elif s.mode == "cats":
        y, slack = cats_ffn(x, w["W1"], b1, w["W2"], b2, w["WU"], thresholds=th, **common)
    else:
        y, slack = predictor_ffn(x, w["W1"], b1, w["W2"], b2, w.get("WU"), w["PA"], w["PB"],
                                 w["PC"], **common)
    assert not slack.any()
    return y


def _check(got: np.ndarray, want: np.ndarray, what) -> None:
    assert np.isfinite(got).all(), what
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < RTOL, (what, err)


def _thresholds(s: SparseSpec, w: dict, x: np.ndarray) -> list[np.ndarray]:
    """Both thresholds on, each alone, both off (t = -1)."""
    t_in = _cut(np.abs(_centered_x(w, x)), 0.4, margin=0.0)
    t_h_alone = _cut(np.abs(_hidden(s, w, x, -1.0)), 0.5)
    t_h = _cut(np.abs(_hidden(s, w, x, float(t_in))), 0.5)
    return [np.array(t, np.float32) for t in
            ([t_in, t_h], [t_in, -1.0], [-1.0, t_h_alone], [-1.0, -1.0])]


@pytest.mark.parametrize("s", [TEAL_DENSE, TEAL_SWIGLU, CATS, TEAL_CENTERED, TEAL_SWIGLU_H],
                         ids=["teal-gelu", "teal-swiglu", "cats-silu", "teal-gelu-xh",
                              "teal-swiglu-h"])
def test_thresholded_modes_match_the_reference(library, emulator, s) -> None:
    v = _variant(library, s)
    w = _weights(s, 1)
    for n in TOKENS:
        x = np.random.default_rng(10 + n).standard_normal((n, s.d_in)).astype(np.float32)
        for th in _thresholds(s, w, x):
            got = emulator.run(v, {"X": x, **w, "TH": th}, any_tokens=True)
            want = _want(s, w, x, th)
            _check(got, want, (s.mode, n, th))
            if th.max() < 0:  # nothing thresholded: the dense FFN (of x - XC, minus HC·W2)
                wu = w.get("WU")
                dense = sparse_ffn(_centered_x(w, x), w["W1"], w.get("B1"), w["W2"],
                                   w.get("B2"),
                                   None if wu is None else (wu.T if s.mode == "teal" else wu),
                                   activation_name=s.activation, up_activation=s.up_activation)
                if "HC" in w:
                    dense = dense - w["HC"].astype(np.float64) @ w["W2"]
                _check(got, dense, (s.mode, n, "dense"))
            else:  # something was cut: the result differs from the dense one
                assert np.abs(got - _want(s, w, x, np.array([-1, -1], np.float32))).max() > \
                    1e-3 * np.abs(want).max()


@pytest.mark.parametrize("s", [PRED_DENSE, PRED_SWIGLU], ids=["pred-gelu-r8", "pred-swiglu-r16"])
def test_predictor_matches_the_reference(library, emulator, s) -> None:
    v = _variant(library, s)
    for n in TOKENS:
        w = _weights(s, 2)
        x = np.random.default_rng(20 + n).standard_normal((n, s.d_in)).astype(np.float32)
        score = (x.astype(np.float64) @ w["PA"]) @ w["PB"] + w["PC"]
        near = (np.abs(score) < 0.05).any(axis=0)  # keep every score far from the cut
        w["PC"] = np.where(near, np.where(score[0] > 0, 50.0, -50.0), w["PC"]).astype(np.float32)
        selected = ((x.astype(np.float64) @ w["PA"]) @ w["PB"] + w["PC"] > 0).mean()
        assert 0.2 < selected < 0.8, selected
        got = emulator.run(v, {"X": x, **w}, any_tokens=True)
        _check(got, _want(s, w, x), (s.mode, n))
        w["PC"] = np.full(s.d_ff, 1e4, np.float32)  # everything selected: the dense FFN
        got = emulator.run(v, {"X": x, **w}, any_tokens=True)
        dense = sparse_ffn(x, w["W1"].T, w.get("B1"), w["W2"], w.get("B2"), w.get("WU"),
                           activation_name=s.activation, up_activation=s.up_activation)
        _check(got, dense, (s.mode, n, "dense"))
        _check(got, _want(s, w, x), (s.mode, n, "all"))


@pytest.mark.parametrize("s", SPECS, ids=[f"{s.mode}-{s.activation}-{s.d_in}-{s.centers}"
                                          for s in SPECS])
def test_everything_cut_leaves_only_b2(library, emulator, s) -> None:
    """All activations zero (t_hidden / t_gate huge, no neuron selected): Y = B2 exactly."""
    w = _weights(s, 3)
    x = np.random.default_rng(4).standard_normal((2, s.d_in)).astype(np.float32)
    inputs = {"X": x, **w}
    if s.mode == "predictor":
        inputs["PC"] = np.full(s.d_ff, -1e4, np.float32)
    else:
        inputs["TH"] = np.array([-1.0, 1e30], np.float32)
    got = emulator.run(_variant(library, s), inputs, any_tokens=True)
    b2 = w.get("B2", np.zeros(s.d_out, np.float32))
    np.testing.assert_array_equal(got, np.broadcast_to(b2, got.shape))


@pytest.mark.parametrize("s", SPECS, ids=[f"{s.mode}-{s.activation}-{s.d_in}-{s.centers}"
                                          for s in SPECS])
def test_skipped_rows_are_never_read(library, emulator, s) -> None:
    """NaN in every row a threshold or the predictor skips (W1/WU rows of small inputs in
    teal, W1 rows of small inputs and WU rows of closed gates in cats, unselected neurons'
    W1/WU rows in predictor, W2 rows of zero activations): Y stays finite and right."""
    w = _weights(s, 5)
    x = np.random.default_rng(6).standard_normal((1, s.d_in)).astype(np.float32)
    poisoned = {k: a.copy() for k, a in w.items()}
    th = None
    if s.mode == "predictor":
        out = ((x.astype(np.float64) @ w["PA"]) @ w["PB"] + w["PC"])[0] <= 0
        for k in ("W1", "WU", "W2"):
            if k in poisoned:
                poisoned[k][out] = np.nan
    else:
        th = _thresholds(s, w, x)[0]
        small = np.abs(_centered_x(w, x)[0]) <= th[0]
        quiet = np.abs(_hidden(s, w, x, float(th[0]))[0]) <= th[1]
        assert 0 < small.sum() < s.d_in and 0 < quiet.sum() < s.d_ff
        poisoned["W1"][small] = np.nan
        if s.mode == "teal" and s.gated:
            poisoned["WU"][small] = np.nan
        if s.mode == "cats":
            poisoned["WU"][quiet] = np.nan
        poisoned["W2"][quiet] = np.nan
        poisoned["TH"] = th
    got = emulator.run(_variant(library, s), {"X": x, **poisoned}, any_tokens=True)
    _check(got, _want(s, w, x, th), (s.mode, "poisoned"))


def test_variant_table_and_launches(library) -> None:
    """One variant per spec over every token count; launches use only the op's inputs, the
    workspace and N; the artifact's If hands 2+ tokens to ORT (sparse_max_tokens 1)."""
    kernels = {"teal": ["proj", "down", "reduce"], "cats": ["gate", "up", "down", "reduce"],
               "predictor": ["z", "score", "rows", "down", "reduce"]}
    for s in SPECS:
        v = _variant(library, s)
        assert (v.variant, v.min_tokens, v.max_tokens) == (s.mode, 1, 2**31 - 1)
        assert [ln.kernel.rsplit("_", 2)[-2] for ln in v.launches] == kernels[s.mode]
        ws = {b for b, _ in v.workspace}
        assert not ws & set(s.arg_names())
        for ln in v.launches:
            assert set(ln.params) <= set(s.arg_names()) | ws | {"N"}
            assert ln.grid[1](5) * ln.grid[2](5) >= 5  # a token axis in the grid
        assert family("cuda").sparse_max_tokens(s) == 1
    assert dict(_variant(library, PRED_DENSE).workspace)["ZP"] == 2 * 8  # kb = 2 partials


def test_unsupported_specs_are_typed_errors(tmp_path) -> None:
    with pytest.raises(CodegenError, match="gated"):
        build_cuda_library([SparseSpec("silu", "none", "cats", D, F, DO, False,
                                       False, False)], family("cuda"), tmp_path)
    with pytest.raises(CodegenError, match="rank"):
        build_cuda_library([SparseSpec("gelu", "none", "predictor", D, F, DO,
                                       False, False, False)], family("cuda"), tmp_path)
