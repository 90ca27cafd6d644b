"""A site's hidden activations from its input and weights (float64, as the reference): what
calibration's statistics and the predictors' labels are computed from."""

from __future__ import annotations

import numpy as np

from ..contract.kinds import SiteKind
from ..contract.sites import Site
from ..verify import reference


def hidden_activations(site: Site, w: dict[str, np.ndarray | None],
                       x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(act(x·Wg) of a gated site or None, the down projection's input a), float64."""
    h = x.astype(np.float64) @ w["W1"]
    if w.get("B1") is not None:
        h = h + w["B1"]
    act = reference.activation(site.activation, h)
    if site.kind is not SiteKind.GATED:
        return None, act
    up = reference.activation(site.up_activation, x.astype(np.float64) @ w["WU"].T)
    return act, act * up
