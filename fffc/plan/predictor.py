"""Low-rank neuron-activity predictors (Deja Vu / PowerInfer style), trained in NumPy.

A predictor for an FFN site scores every neuron from the token's input, x → (x·A)·B + c
with A [d, r], B [r, d_ff], and selects the neurons whose score passes a cut. Labels come
from the calibration samples and the site's own weights: a neuron is *active* where the
down projection's input |a| exceeds the calibrated threshold of the target sparsity (for
ReLU sites: a > 0). Training starts from the truncated SVD of the (gate) projection — then
x·A·B + c already approximates the pre-activation — and minimizes a recall-weighted binary
cross-entropy (positives weighted ``pos_weight`` times), so that missing an active neuron
costs more than computing an idle one. The cut is set on held-out rows so that the
predictor keeps ``recall`` of the active neurons; recall, precision and the fraction of
neurons selected on the held-out rows are what the site reports.

Training can make the predictor worse than its start: with few calibration rows (a few
hundred decode steps) against ``rank·(d + d_ff)`` parameters it overfits the training rows.
So the predictor kept is, among its start and every ``CHECK_EVERY`` epochs of training, the
one that selects the fewest held-out neurons at the recall cut (early stopping on the
held-out rows; the same rows then set its cut and report its quality, a choice among a
dozen candidates that biases the reported quality by little).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract.sites import Site
from .activations import hidden_activations

CHECK_EVERY = 10  # epochs between the candidates early stopping compares


@dataclass
class Predictor:
    a: np.ndarray  # [d_model, rank]
    b: np.ndarray  # [rank, d_ff]
    c: np.ndarray  # [d_ff]
    cut: float  # select where score > cut

    def scores(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.a) @ self.b + self.c

    def select(self, x: np.ndarray) -> np.ndarray:
        return self.scores(x) > self.cut


@dataclass
class Quality:
    recall: float  # active neurons selected / active neurons
    precision: float  # active neurons selected / neurons selected
    selected: float  # fraction of neurons selected (1 - the predicted sparsity)
    active: float  # fraction of neurons active

    def to_json(self) -> dict:
        return {k: round(float(v), 5) for k, v in self.__dict__.items()}


def labels(site: Site, w: dict[str, np.ndarray | None], x: np.ndarray,
           threshold: float) -> np.ndarray:
    """Which neurons are active for each row of x: |a| > threshold (a > 0 for ReLU)."""
    _, hidden = hidden_activations(site, w, x)
    return np.abs(hidden) > threshold


def quality(selected: np.ndarray, active: np.ndarray) -> Quality:
    hit = np.count_nonzero(selected & active)
    return Quality(recall=hit / max(1, np.count_nonzero(active)),
                   precision=hit / max(1, np.count_nonzero(selected)),
                   selected=float(selected.mean()), active=float(active.mean()))


def train(x: np.ndarray, active: np.ndarray, w1: np.ndarray, rank: int, *,
          b1: np.ndarray | None = None, recall: float = 0.99, epochs: int = 100,
          lr: float = 3e-3, pos_weight: float = 4.0, holdout: float = 0.2,
          seed: int = 0) -> tuple[Predictor, Quality]:
    """Fit a rank-``rank`` predictor of ``active`` [N, d_ff] from ``x`` [N, d] (Adam,
    full batch); ``w1`` [d, d_ff] is the projection whose SVD initializes it, ``b1`` its
    bias (the start's ``c``)."""
    val, fit = split(len(x), holdout, seed)
    xt, yt = x[fit].astype(np.float64), active[fit].astype(np.float64)
    u, s, vt = np.linalg.svd(w1.astype(np.float64), full_matrices=False)
    r = min(rank, len(s))
    params = {"a": u[:, :r] * np.sqrt(s[:r]), "b": np.sqrt(s[:r])[:, None] * vt[:r],
              "c": np.zeros(w1.shape[1]) if b1 is None else np.array(b1, np.float64).ravel()}
    # scale so that the initial scores are z-scores of the approximated pre-activation
    z = (xt @ params["a"]) @ params["b"] + params["c"]
    scale = 1.0 / max(float(z.std()), 1e-12)
    params["b"] *= scale
    params["c"] *= scale
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    weight = np.where(yt > 0, pos_weight, 1.0)
    norm = weight.sum()
    xv, yv = x[val].astype(np.float64), active[val]
    best = _cut(params, xv, yv, recall)
    for step in range(1, epochs + 1):
        hidden = xt @ params["a"]
        logits = hidden @ params["b"] + params["c"]
        p = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
        g = weight * (p - yt) / norm  # d(weighted BCE)/d logits
        grads = {"b": hidden.T @ g, "c": g.sum(0), "a": xt.T @ (g @ params["b"].T)}
        for k in params:  # Adam
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
            mh, vh = m[k] / (1 - 0.9**step), v[k] / (1 - 0.999**step)
            params[k] -= lr * mh / (np.sqrt(vh) + 1e-8)
        if step % CHECK_EVERY == 0 or step == epochs:
            best = min(best, _cut(params, xv, yv, recall), key=lambda c: c[1].selected)
    return best


def _cut(params: dict[str, np.ndarray], xv: np.ndarray, yv: np.ndarray,
         recall: float) -> tuple[Predictor, Quality]:
    """A copy of ``params`` as a predictor whose cut keeps ``recall`` of the held-out rows'
    active neurons, and its held-out quality."""
    pred = Predictor(params["a"].copy(), params["b"].copy(), params["c"].copy(), 0.0)
    sv = pred.scores(xv)
    pos = sv[yv]
    pred.cut = float(np.quantile(pos, 1.0 - recall)) if pos.size else float(sv.max())
    pred.cut = np.nextafter(pred.cut, -np.inf)  # keep the quantile's own score selected
    return pred, quality(pred.select(xv), yv)


def split(n: int, holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, training rows) of n samples: ``train``'s split, for its cut and levels."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(n * holdout))
    return order[:n_val], order[n_val:]


def cut_levels(pred: Predictor, x: np.ndarray, active: np.ndarray,
               skipped: tuple[float, ...], holdout: float = 0.2,
               seed: int = 0) -> dict[str, dict[str, float]]:
    """Looser and tighter cuts than the trained one, for the budget search: per fraction f
    of the neurons to skip, the score cut below which f of the held-out (token, neuron)
    scores fall, as ``shift`` = trained cut − that cut (added to the scores of the folded
    predictor: score − cut + shift > 0 selects), with its held-out quality."""
    val, _ = split(len(x), holdout, seed)
    sv, yv = pred.scores(x[val].astype(np.float64)), active[val]
    out = {}
    for f in skipped:
        cut = float(np.quantile(sv, f))
        out[f"{f:g}"] = {"shift": float(pred.cut - cut), **quality(sv > cut, yv).to_json()}
    return out


def random_baseline(active: np.ndarray, fraction: float, seed: int = 0) -> Quality:
    """What selecting ``fraction`` of the neurons at random achieves (recall ≈ fraction)."""
    rng = np.random.default_rng(seed)
    return quality(rng.random(active.shape) < fraction, active)
