"""Stage: what each site becomes and why (``fffc.plan.decide``); a model without sites is
refused here, with the near misses that came closest."""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.analysis import Analysis
from ..contract.errors import NoSitesError
from ..plan import decide
from .context import Context

NAME = "plan"


@dataclass
class Planned:
    analysis: Analysis
    calibration: dict | None = None  # the manifest's record of an applied calibration


def run(analysis: Analysis, ctx: Context) -> Planned:
    if not analysis.sites:
        why = "; ".join(f"{m.nodes[-1]}: {m.reason}" for m in analysis.near_misses[:3])
        raise NoSitesError("no FFN found" + (f" (near misses: {why})" if why else ""),
                           path=analysis.path)
    fam = ctx.family
    int4 = fam is not None and fam.int4_weights
    decide.plan(analysis.sites, ctx.options.sites, int4_target=fam.name if int4 else "",
                int4_int8_x=int4 and fam.int4_int8_x)
    return Planned(analysis)
