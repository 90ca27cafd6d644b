"""Site activations: the model with every site in standard ops, each site's input and output
exposed as graph outputs, run on the probes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .. import passes
from ..contract.lowering import SiteLowering
from ..frontend import copy
from .compare import run, session

Probes = tuple[list[np.ndarray], list[np.ndarray]]  # a site's inputs and outputs, per feed


@dataclass
class Captured:
    """What a model computed on the probes: per site its inputs and outputs, and the
    model's own outputs."""

    sites: dict[str, Probes]
    outputs: list[list[np.ndarray]]


def capture(model: ir.Model, n_outputs: int, feeds: Sequence[dict[str, np.ndarray]],
            plans: Mapping[str, SiteLowering] | None = None) -> Captured:
    """``model`` (with markers) lowered to standard ops — each site as it was, or the masked
    function of its ``plans`` entry (on its dequantized weights where it says so) — and run
    on ``feeds``; ``n_outputs``: the model's own
    outputs come first."""
    dense = copy(model)
    io = passes.site_io(dense)
    passes.lower(dense, {name: SiteLowering(masks=p.masks, dequantized=p.dequantized)
                         for name, p in (plans or {}).items()})
    passes.expose(dense, [n for pair in io.values() for n in pair])
    got = run(session(dense), feeds)
    names = [o.name for o in dense.graph.outputs]
    sites = {}
    for site, (x_name, y_name) in io.items():
        xi, yi = names.index(x_name), names.index(y_name)
        sites[site] = ([g[xi] for g in got], [g[yi] for g in got])
    return Captured(sites, [g[:n_outputs] for g in got])
