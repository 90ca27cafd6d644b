"""Stage: the built artifact against its reference — every kernel alone (against the
function it computes at every count), the model with and without the shim (against, per
probe, what the branch serving its token count computes), the CUDA kernels in the
emulator (``fffc.verify.artifact``). A site whose kernels fail is left as it was and the
build repeated (``retry``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace

from ..contract.tolerances import for_dtype
from ..plan.decide import leave
from ..verify.artifact import check_artifact, check_cuda, deviation
from ..verify.compare import compare_runs
from .context import Context
from .dispatch import Dispatch
from .shim import Shim
from .verify_sites import beyond_probes, expected, refresh

NAME = "check artifact"


@dataclass
class Checked:
    shim: Shim
    report: dict = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # site → why its kernels failed

    @property
    def verified(self):
        return self.shim.verified


def run(shim: Shim, ctx: Context) -> Checked:
    v, lowered, library = shim.verified, shim.kernels.lowered, shim.kernels.library
    # a 16-bit model's outputs are checked at its dtype's rounding (every site has it)
    rtol = max((for_dtype(s.dtype, ctx.options.rtol) for s in v.sites),
               default=ctx.options.rtol)
    try:
        with ctx.report(NAME):
            tokens = lowered.dispatch.tokens
            extra = beyond_probes(v, tokens, ctx)
            report, failed = check_artifact(v.sites, lowered.model, lowered.path,
                                            shim.check_path, [*v.feeds, *extra],
                                            expected(v, tokens, extra), v.reference.sites,
                                            v.inputs, tokens, rtol, v.analysis.path)
            if extra:
                report["beyond_probes"] = [{k: list(a.shape) for k, a in f.items()}
                                           for f in extra]
            if v.reference is not v.original:
                report["deviation_from_original"] = deviation(
                    lowered.path, shim.check_path, v.feeds, v.original.outputs, rtol)
                # the masked function at every count (what the kernels compute) vs the
                # original, whichever branch serves each probe in the artifact
                c = compare_runs(v.reference.outputs, v.original.outputs, rtol)
                report["masked_from_original"] = {"max_abs": c.max_abs, "max_rel": c.max_rel}
    finally:
        if shim.check_path is not shim.path:
            shutil.rmtree(shim.check_path.parent, ignore_errors=True)
    if shim.twin:
        report["kernels_checked_on"] = shim.twin
    if library is not None and library.cuda is not None:
        with ctx.report("check CUDA kernels (CPU emulation)"):
            report["cuda_kernels"] = check_cuda(v.sites, library.cuda, v.reference.sites,
                                                v.inputs, rtol, failed, ctx.options.weight_dtype)
    ctx.dump.json("08-check.json", report)
    return Checked(shim, report, failed)


def retry(checked: Checked, ctx: Context) -> Dispatch:
    """The sites whose kernels failed left as they were, the reference brought in line:
    what the next build round lowers."""
    dispatch = checked.shim.kernels.lowered.dispatch
    for s in checked.verified.sites:
        if s.name in checked.failed:
            leave(s, f"kernel check failed: {checked.failed[s.name]}")
            s.dispatch = None
    return replace(dispatch, verified=refresh(dispatch.verified, ctx))
