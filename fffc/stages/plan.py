"""Stage: what each site becomes and why (``fffc.plan.decide``); a model without sites is
refused here, with the near misses that came closest, and so is a float16/bfloat16 model
(its sites are found and reported; fffc verifies and lowers float32 activations only)."""

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
    narrow = [s for s in analysis.sites if not s.float32]
    if narrow:  # verification feeds and references are float32 throughout
        names = ", ".join(f"{s.name} ({s.matched_nodes[-1]})" if s.matched_nodes else s.name
                          for s in narrow)
        raise NoSitesError(f"no FFN fffc can lower: {names}: {narrow[0].dtype} weights and "
                           f"activations (a {narrow[0].dtype} model): fffc compiles float32 "
                           "and quantized-weight models only (fffc inspect lists these sites)",
                           path=analysis.path)
    fam = ctx.family
    int4 = fam is not None and fam.int4_weights
    decide.plan(analysis.sites, ctx.options.sites, int4_target=fam.name if int4 else "",
                int4_int8_x=int4 and fam.int4_int8_x,
                int4_modes=fam.int4_modes if int4 else frozenset())
    return Planned(analysis)
