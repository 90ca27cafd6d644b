"""Stage: which token counts each op serves with its kernels — past a token-dispatched
site's crossover ONNX Runtime's dense FFN runs (an If on the token count), and a
structured site's pre-merged dense weights serve calls of up to its measured crossover."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import passes
from ..codegen.crossover import measure_crossover
from ..contract.kernels import merged_spec
from ..contract.lowering import SiteLowering
from ..contract.modes import kernel_spec, mode
from .context import Context
from .verify_sites import Verified

NAME = "dispatch"


@dataclass
class Dispatch:
    verified: Verified
    sparse: dict[str, int] = field(default_factory=dict)  # kernel up to N tokens (0: always)
    merged: dict[str, int] = field(default_factory=dict)  # merged path up to N tokens

    def lowerings(self) -> dict[str, SiteLowering]:
        """Every site's lowering, from its decision, masks and token bounds."""
        out = {}
        for s in self.verified.sites:
            m = mode(s.decision)
            out[s.name] = SiteLowering(
                s.decision, masks=m.masks(s),
                max_tokens=self.sparse.get(s.name, 0) if m.token_dispatch else 0,
                merged_max_tokens=self.merged.get(s.name, 0) if m.merged_path else 0)
        return out


def run(verified: Verified, ctx: Context) -> Dispatch:
    o, fam = ctx.options, ctx.family
    sparse = {s.name: (o.max_sparse_tokens if o.max_sparse_tokens is not None
                       else fam.sparse_max_tokens(kernel_spec(s)))
              for s in verified.sites if mode(s.decision).token_dispatch}
    merged = {}
    for s in verified.sites:
        if not mode(s.decision).merged_path:
            continue
        st = s.structure
        if o.merged_max_tokens is not None:
            merged[s.name] = o.merged_max_tokens
            st["crossover"] = "set by --merged-max-tokens"
        elif not fam.merged_path:
            merged[s.name] = 0
            st["crossover"] = f"{fam.name}: the structured kernels serve every token count"
        elif not fam.timed_here:
            merged[s.name] = 0
            st["crossover"] = f"not measured: {fam.name} kernels do not run on this host"
        else:
            with ctx.report(f"time structured vs merged ({s.name})"):
                merged[s.name], st["crossover"] = measure_crossover(
                    fam, kernel_spec(s), merged_spec(s), passes.site_inputs(verified.working, s))
        st["merged_max_tokens"] = merged[s.name]
    return Dispatch(verified, sparse, merged)
