"""``fffc.predictor``: trained low-rank predictors find the active neurons far better than
selecting as many at random, on a synthetic site."""

from __future__ import annotations

import numpy as np

from fffc.contract.sites import Site
from fffc.plan import predictor
from fffc.plan.activations import hidden_activations
from fffc.plan.calibration import Histogram

D, F = 64, 256


def _site(activation: str = "gelu") -> tuple[Site, dict, np.ndarray]:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((12, D))  # hidden states live near a low-dimensional subspace
    x = rng.standard_normal((4096, 12)) @ basis + 0.3 * rng.standard_normal((4096, D))
    w = {"W1": rng.standard_normal((D, F)) / np.sqrt(4 * D), "B1": rng.standard_normal(F) * 0.1,
         "W2": None, "WU": None}
    site = Site("s", "test", "dense", activation, "none", D, F, D, True, False, "float32")
    return site, w, x.astype(np.float32)


def test_labels_follow_the_threshold_and_relu_zeros() -> None:
    site, w, x = _site("relu")
    _, a = hidden_activations(site, w, x)
    np.testing.assert_array_equal(predictor.labels(site, w, x, 0.0), a > 0)
    assert predictor.labels(site, w, x, float(np.quantile(a, 0.95))).mean() < 0.06


def test_trained_predictor_beats_random_selection() -> None:
    site, w, x = _site()
    _, a = hidden_activations(site, w, x)
    h = Histogram()
    h.add(a)
    active = predictor.labels(site, w, x, h.quantile(0.8))  # 20% active
    untrained, _ = predictor.train(x, active, w["W1"], 16, epochs=0)
    pred, q = predictor.train(x, active, w["W1"], 16)
    assert q.recall >= 0.98  # the cut keeps 99% of the active neurons on held-out rows
    assert q.selected < 0.4  # … while computing well under half of the neurons
    base = predictor.random_baseline(active, q.selected)
    assert base.recall < 0.45 and q.recall > 2 * base.recall
    # training is what does it: the SVD start alone needs most neurons for that recall
    val = np.random.default_rng(0).permutation(len(x))[: len(x) // 5]
    start = predictor.quality(untrained.select(x[val]), active[val])
    assert start.selected > 2 * q.selected
    assert pred.a.shape == (D, 16) and pred.b.shape == (16, F) and pred.c.shape == (F,)


def test_cut_levels_select_their_fraction_on_held_out_rows() -> None:
    """Each level's shift, added to the folded scores (score − cut), selects 1 − f of the
    held-out (token, neuron) pairs; tighter levels keep fewer of the active neurons."""
    site, w, x = _site()
    _, a = hidden_activations(site, w, x)
    h = Histogram()
    h.add(a)
    active = predictor.labels(site, w, x, h.quantile(0.8))
    pred, q = predictor.train(x, active, w["W1"], 16)
    levels = predictor.cut_levels(pred, x, active, (0.25, 0.5, 0.9))
    val, _ = predictor.split(len(x))
    folded = pred.scores(x[val].astype(np.float64)) - pred.cut
    recalls = []
    for f, lv in levels.items():
        chosen = folded + lv["shift"] > 0
        assert abs(chosen.mean() - (1 - float(f))) < 2e-3  # up to ties at the quantile
        assert lv["selected"] == round(float(chosen.mean()), 5)
        assert lv["recall"] == round(predictor.quality(chosen, active[val]).recall, 5)
        recalls.append(lv["recall"])
    assert recalls == sorted(recalls, reverse=True) and recalls[-1] < q.recall
