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


def test_training_never_ends_worse_than_its_start_on_few_rows() -> None:
    """A gate of rank 8 with a per-neuron offset closing ~90% of it, and only 128 rows (a few
    hundred decode steps is what a calibration sees): the SVD start at rank 8 predicts the
    gate exactly, while 100 epochs on 102 training rows overfit (they selected ~90% of the
    held-out neurons); the kept predictor is the better one."""
    rng = np.random.default_rng(1)
    d, f, r, n = 128, 512, 8, 128
    w1 = rng.standard_normal((d, r)) @ rng.standard_normal((r, f)) / np.sqrt(d * r)
    x = rng.standard_normal((n, d))
    b1 = -np.quantile(x @ w1, 0.9, axis=0)  # the 90% quantile of each neuron: ~10% open
    active = x @ w1 + b1 > 0
    given = b1.copy()
    _, q0 = predictor.train(x, active, w1, r, b1=b1, epochs=0)
    _, q = predictor.train(x, active, w1, r, b1=b1)
    assert q0.selected < 0.2  # the start: about the 10% that are open
    assert q.recall >= 0.98 and q.selected <= q0.selected
    np.testing.assert_array_equal(b1, given)  # the caller's bias is not trained in place
