"""``fffc.allocate``: TEAL's greedy per-site levels respect the budget on held-out inputs,
checked by rebuilding the chosen thresholds as constants and measuring independently."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import fffc
from fffc.pipeline import analyze
from fffc.plan import allocate
from tests.fixtures.calibration import D
from tests.fixtures.calibration import feeds as _feeds
from tests.fixtures.calibration import two_ffn_model as _models


def _rel_err(model_bytes, path, feeds) -> float:
    got = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    num = den = 0.0
    for f in feeds:
        g, w = got.run(None, f)[0].astype(np.float64), want.run(None, f)[0].astype(np.float64)
        num, den = num + np.sum((g - w) ** 2), den + np.sum(w**2)
    return float(np.sqrt(num / den))


@pytest.fixture
def setup(tmp_path):
    path, _ = _models(tmp_path)
    data, _ = _feeds(tmp_path, count=3)
    calib = fffc.calibrate(path, data)
    rng = np.random.default_rng(99)
    calib_feeds = [{"x": rng.standard_normal((2, 25, D)).astype(np.float32)} for _ in range(2)]
    held_out = [{"x": rng.standard_normal((2, 25, D)).astype(np.float32)} for _ in range(2)]
    return path, calib, calib_feeds, held_out


def test_error_budget_holds_on_held_out_inputs(setup) -> None:
    path, calib, calib_feeds, held_out = setup
    alloc = allocate.allocate(analyze(path), calib, calib_feeds, held_out, max_error=0.05)
    assert alloc.sparsity > 0.0 and alloc.error_held_out <= 0.05
    measured = _rel_err(allocate.apply(analyze(path), calib, alloc).SerializeToString(), path, held_out)
    assert measured == pytest.approx(alloc.error_held_out, rel=1e-3, abs=1e-6)
    assert measured <= 0.05
    # a bigger budget buys at least as much sparsity
    looser = allocate.allocate(analyze(path), calib, calib_feeds, held_out, max_error=0.2)
    assert looser.sparsity >= alloc.sparsity and looser.error_held_out <= 0.2


def test_target_sparsity_is_reached_unevenly(setup) -> None:
    path, calib, calib_feeds, held_out = setup
    alloc = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.5)
    assert alloc.sparsity >= 0.5
    levels = {lv for parts in alloc.levels.values() for lv in parts.values()}
    assert len(levels) > 1  # not one uniform level everywhere
    errs = [s["error_calibration"] for s in alloc.steps]
    assert errs[0] == 0.0 and alloc.steps[-1]["sparsity"] == pytest.approx(alloc.sparsity)


def test_one_budget_required(setup) -> None:
    path, calib, calib_feeds, held_out = setup
    with pytest.raises(fffc.FffcError, match="one budget"):
        allocate.allocate(analyze(path), calib, calib_feeds, held_out)


def test_gated_site_takes_hidden_or_gate_never_both(setup) -> None:
    """The SwiGLU site may be thresholded TEAL's way (a) or CATS's (its gate), not both;
    the GELU site has no gate. Forced onto the gate, the site is planned as mode cats."""
    from fffc.pipeline import analyze
    from fffc.plan.decide import apply_thresholds, plan

    path, calib, calib_feeds, held_out = setup
    alloc = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.7)
    assert "gate" not in alloc.levels["fffc_ffn_0"]
    lv = alloc.levels["fffc_ffn_1"]
    assert not (lv["hidden"] > 0 and lv["gate"] > 0)
    gate_only = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.3,
                                  parts=("input", "gate"))
    assert gate_only.levels["fffc_ffn_1"]["gate"] > 0
    measured = _rel_err(allocate.apply(analyze(path), calib, gate_only).SerializeToString(), path,
                        held_out)
    assert measured == pytest.approx(gate_only.error_held_out, rel=1e-3, abs=1e-6)
    a = analyze(path)
    plan(a.sites)
    apply_thresholds(a.sites, gate_only.thresholds, gate_only.levels)
    site = next(s for s in a.sites if s.name == "fffc_ffn_1")
    assert site.decision == "cats"
    assert site.thresholds == (gate_only.thresholds["fffc_ffn_1"]["input"],
                               gate_only.thresholds["fffc_ffn_1"]["gate"])


def _with_predictors(path, tmp_path) -> tuple[dict, dict[str, tuple]]:
    """A calibration of ``path`` with rank-8 predictors (of the 30% most active neurons),
    and the predictors as the search takes them."""
    from fffc.plan import calibration
    from fffc.plan.calibration import load_predictors

    data = tmp_path / "pfeeds"
    data.mkdir()
    for i in range(3):
        x = np.random.default_rng(10 + i).standard_normal((2, 25, D)).astype(np.float32)
        np.savez(data / f"{i}.npz", x=x)
    calib = calibration.calibrate(analyze(path), data, predictor_rank=8, predictor_sparsity=0.7)
    calibration.write(calib, tmp_path / "c.json")
    return calib, load_predictors(tmp_path / "c.json", calib)


def test_predictors_join_the_search_as_a_mode(setup, tmp_path) -> None:
    """With predictors, a site may switch its predictor on instead of thresholds (never
    both); the recorded held-out error is what the masked reference model shows."""
    path, _, calib_feeds, held_out = setup
    calib, predictors = _with_predictors(path, tmp_path)
    assert set(predictors) == {"fffc_ffn_0", "fffc_ffn_1"}
    only = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.05,
                             parts=(), predictors=predictors)
    on = [n for n, t in only.thresholds.items() if t["predictor"] > 0]
    assert on and only.sparsity >= 0.05
    for n in on:  # one of the predictor's cut levels (test_the_search_picks_each_predictors_cut)
        levels = calib["sites"][n]["predictor"]["levels"].values()
        assert any(only.levels[n]["predictor"] == pytest.approx(1 - v["selected"])
                   for v in levels)
    measured = _rel_err(allocate.apply(analyze(path), calib, only, predictors).SerializeToString(),
                        path, held_out)
    assert measured == pytest.approx(only.error_held_out, rel=1e-3, abs=1e-6)
    mixed = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.7,
                              predictors=predictors)
    for lv in mixed.levels.values():
        thresholds = [p for p, v in lv.items() if p != "predictor" and v > 0]
        assert not (lv.get("predictor", 0) > 0 and thresholds)


def test_the_search_picks_each_predictors_cut(setup, tmp_path) -> None:
    """A predictor's cut is a searched level (fractions of neurons skipped on held-out rows):
    a budget past the trained cut's sparsity is met by tightening it; the chosen shift,
    folded into the predictor for the compiled op, gives the recorded held-out error."""
    from fffc.pipeline import analyze
    from fffc.plan.decide import apply_thresholds, plan

    path, _, calib_feeds, held_out = setup
    calib, predictors = _with_predictors(path, tmp_path)
    trained = max(1 - st["predictor"]["held_out"]["selected"] for st in calib["sites"].values())
    alloc = allocate.allocate(analyze(path), calib, calib_feeds, held_out, target_sparsity=0.8,
                              parts=(), predictors=predictors)
    assert alloc.sparsity >= 0.8 > trained  # only tighter cuts than the trained one get there
    assert set(alloc.shifts) == set(predictors)
    for n, shift in alloc.shifts.items():
        (level,) = [v for v in calib["sites"][n]["predictor"]["levels"].values()
                    if v["shift"] == shift]
        assert alloc.levels[n]["predictor"] == pytest.approx(1 - level["selected"])
    measured = _rel_err(allocate.apply(analyze(path), calib, alloc, predictors).SerializeToString(),
                        path, held_out)
    assert measured == pytest.approx(alloc.error_held_out, rel=1e-3, abs=1e-6)
    a = analyze(path)
    plan(a.sites)
    apply_thresholds(a.sites, alloc.thresholds, alloc.levels, calib, predictors, alloc.shifts)
    for site in a.sites:
        _, _, c = site.predictor_arrays
        np.testing.assert_allclose(c, predictors[site.name][2] + alloc.shifts[site.name],
                                   rtol=1e-6)
        assert site.predictor["selected"] == pytest.approx(1 - alloc.levels[site.name]["predictor"])


def test_padding_rows_do_not_count_in_the_error(tmp_path) -> None:
    """With a calibration that left padding out (feeds with ``attention_mask``), the search
    measures its error on the real tokens' outputs only: padded feeds give the error of
    the same real rows without padding; a calibration that counted padding counts it."""
    from tests.fixtures.calibration import masked_feeds as _masked_feeds

    masked_path, padded, real = _masked_feeds(tmp_path)
    calib = fffc.calibrate(masked_path, padded)
    assert calib["token_mask"] == "attention_mask"
    feed = dict(np.load(padded / "0.npz"))
    only_real = dict(np.load(real / "0.npz"))
    got = allocate.allocate(analyze(masked_path), calib, [feed], [feed], uniform=0.5)
    want = allocate.allocate(analyze(masked_path), calib, [only_real], [only_real], uniform=0.5)
    assert got.error_calibration > 0
    assert got.error_calibration == pytest.approx(want.error_calibration, rel=1e-6)
    counted = {**calib, "token_mask": None}
    every = allocate.allocate(analyze(masked_path), counted, [feed], [feed], uniform=0.5)
    assert abs(every.error_calibration - want.error_calibration) > 1e-3 * want.error_calibration
