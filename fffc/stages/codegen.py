"""Stage: the kernels of every site with kernels, for the target (``fffc.codegen``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codegen.build import KernelLibrary, build_kernel_library, source
from ..contract.kernels import merged_spec
from ..contract.modes import counted_specs, kernel_specs, mode
from ..package.layout import KERNELS
from .context import Context
from .lower import Lowered

NAME = "codegen"


@dataclass
class Kernels:
    lowered: Lowered
    library: KernelLibrary | None = None  # None: no site has kernels
    specs: list = field(default_factory=list)

    @property
    def verified(self):
        return self.lowered.verified


def needed(lowered: Lowered) -> list:
    """The kernel specs the lowered sites call (a structured site's merged path included)."""
    sites = [s for s in lowered.verified.sites if mode(s.decision).kernels]
    merged = lowered.dispatch.merged
    return sorted({k for s in sites for k in kernel_specs(s)}
                  | {merged_spec(s) for s in sites if merged.get(s.name, 0) > 0},
                  key=lambda k: k.key)


def run(lowered: Lowered, ctx: Context) -> Kernels:
    sites = [s for s in lowered.verified.sites if mode(s.decision).kernels]
    if not sites:
        return Kernels(lowered)
    specs = needed(lowered)
    counted = sorted({k for s in sites for k in counted_specs(s)}, key=lambda k: k.key)
    o, fam = ctx.options, ctx.family
    with ctx.report(f"codegen ({len(specs)} kernel families, {fam.name})"):
        library = build_kernel_library(specs, fam, ctx.staging / KERNELS / fam.name,
                                       mcpu=ctx.target.mcpu, archs=o.cuda_archs,
                                       mattr=o.mattr, counted_specs=counted,
                                       weight_dtype=o.weight_dtype,
                                       cuda_version=o.cuda_version)
    if ctx.dump.root:
        for k in library.kernels:
            ctx.dump.text(f"06-kernels/{k.symbol}.py",
                          source(k.spec, k.variant, fam.cpu, library.target.get("mcpu")))
    return Kernels(lowered, library, specs)
