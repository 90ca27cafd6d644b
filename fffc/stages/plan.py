"""Stage: what each site becomes and why (``fffc.plan.decide``); a model without sites is
refused here, with the near misses that came closest, and so is a 16-bit model with FFF,
structured or routed sites (found and reported; their forms are float32 only). A model
whose verification would need more memory than ``--max-memory`` (``fffc.plan.memory``) is
refused here too, before the stages that allocate it."""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.analysis import Analysis
from ..contract.errors import NoSitesError
from ..contract.kinds import Decision
from ..contract.modes import mode
from ..plan import decide, memory
from .context import Context

NAME = "plan"
NARROW_KINDS = mode(Decision.EXACT).kinds  # a 16-bit model's sites fffc lowers


@dataclass
class Planned:
    analysis: Analysis
    calibration: dict | None = None  # the manifest's record of an applied calibration


def run(analysis: Analysis, ctx: Context) -> Planned:
    if not analysis.sites:
        why = "; ".join(f"{m.nodes[-1]}: {m.reason}" for m in analysis.near_misses[:3])
        raise NoSitesError("no FFN found" + (f" (near misses: {why})" if why else ""),
                           path=analysis.path)
    other = [s for s in analysis.sites if not s.float32 and s.kind not in NARROW_KINDS]
    if other:  # their canonical forms and references are float32-only
        names = ", ".join(f"{s.name} ({s.kind})" for s in other)
        raise NoSitesError(f"no FFN fffc can lower: {names}: {other[0].dtype} weights and "
                           f"activations (a {other[0].dtype} model): fffc compiles the dense "
                           "and gated FFNs of 16-bit models only (fffc inspect lists these "
                           "sites)", path=analysis.path)
    memory.check(memory.verification(analysis, ctx.options), ctx.memory_budget(),
                 analysis.path)
    fam = ctx.family
    int4 = fam is not None and fam.int4_weights
    decide.plan(analysis.sites, ctx.options.sites, int4_target=fam.name if int4 else "",
                int8_weights=int4 and fam.int8_weights,
                int8_act_quant=int4 and fam.int8_act_quant,
                int4_modes=fam.int4_modes if int4 else frozenset())
    return Planned(analysis)
