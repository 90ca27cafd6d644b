"""Stage (with ``--calibration``): the calibrated masked modes and their levels per site,
by the budget's rule or the allocation searched (``fffc.plan.allocate``)."""

from __future__ import annotations

from dataclasses import replace

from ..plan.allocate import plan_sites
from .context import Context
from .plan import Planned

NAME = "allocate calibrated modes"


def run(planned: Planned, ctx: Context) -> Planned:
    o = ctx.options
    if o.calibration is not None:
        with ctx.report(NAME):
            fam = ctx.family
            int4_modes = fam.int4_modes if fam is not None and fam.int4_weights else frozenset()
            planned = replace(planned, calibration=plan_sites(
                planned.analysis, o.calibration, o.budget, o.data, o.seed, int4_modes))
    ctx.dump.json("03-plan.json", {"sites": [s.to_json() for s in planned.analysis.sites],
                                   "calibration": planned.calibration})
    return planned
