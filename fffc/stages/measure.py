"""Stage: the crossovers the dispatch stage left pending, timed on this machine — each site's
kernel (its node alone, through the shim just built) against ONNX Runtime running the
branch the artifact would run instead (``fffc.verify.crossover``) — and the model lowered
again with the bounds: the ``If`` is in the model, the kernels stay as built. A site whose
original was faster even at 1 token is left as it was; where that leaves kernels no site
calls, the round is built again without them."""

from __future__ import annotations

from dataclasses import replace

import onnx
import onnx_ir as ir

from .. import frontend, passes
from ..contract.dispatch import TokenDispatch
from ..contract.kinds import Branch, Crossover
from ..contract.lowering import SiteLowering
from ..contract.modes import kernel_spec, mode
from ..contract.sites import Site
from ..plan.decide import leave
from ..verify.artifact import single_node_model
from ..verify.crossover import subgraph, time_site
from . import codegen, lower
from . import shim as shim_stage
from .context import Context
from .dispatch import Dispatch, slower
from .shim import Shim
from .verify_sites import Verified, refresh

NAME = "measure crossovers"


def others(v: Verified, sites: list[Site],
           tokens: dict[str, TokenDispatch]) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """The model with every site in standard ops — a site served by its masked function
    beyond its bound (``Branch.MASKED``) masked — and each site's input and output names."""
    model = frontend.copy(v.working)
    io = passes.site_io(model)
    passes.lower(model, {s.name: SiteLowering(masks=mode(s.decision).masks(s)) for s in sites
                         if tokens[s.name].beyond is Branch.MASKED})
    return ir.serde.serialize_model(model), io


def measure(site: Site, v: Verified, artifact: onnx.ModelProto, other: onnx.ModelProto,
            io: tuple[str, str], shim: str, planned: TokenDispatch,
            ctx: Context) -> TokenDispatch:
    """The site's token dispatch from its timings (where its sides cannot be timed alone:
    the target's table, and why)."""
    try:
        xs = v.original.sites[site.name][0]
        elem = onnx.helper.np_dtype_to_tensor_dtype(xs[0].dtype)  # a 16-bit model's X
        timings = time_site(single_node_model(artifact, site.name),
                            subgraph(other, *io, elem), shim, xs)
    except Exception as e:  # ORT raises one type for everything; keep its first line
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        fam = ctx.family
        return TokenDispatch(fam.max_tokens(kernel_spec(site)) or None, Crossover.TABLE,
                             planned.beyond, note=f"{fam.name} table: not measured: {why}")
    return TokenDispatch.measured(timings, Crossover.MEASURED, planned.beyond)


def run(built: Shim, ctx: Context) -> Shim:
    lowered = built.kernels.lowered
    dispatch = lowered.dispatch
    if not dispatch.pending or built.check_path is None:
        return built
    sites = [s for s in dispatch.verified.sites if s.name in dispatch.pending]
    with ctx.report(f"{NAME} ({len(sites)} site(s), kernel vs ONNX Runtime)"):
        measured = _measured(built, sites, ctx)
        if all(measured.tokens[s.name].kernel_max_tokens is None for s in sites):
            return replace(built, kernels=replace(built.kernels, lowered=replace(
                lowered, dispatch=measured)))  # as lowered
        relowered = lower.write(measured, ctx)
    if codegen.needed(relowered) == built.kernels.specs:
        return replace(built, kernels=replace(built.kernels, lowered=relowered))
    return shim_stage.run(codegen.run(lower.run(measured, ctx), ctx), ctx)


def _measured(built: Shim, sites: list[Site], ctx: Context) -> Dispatch:
    """The dispatch with the sites' measured bounds (a site the original beats at 1 token
    left as it was, the reference brought in line)."""
    dispatch = built.kernels.lowered.dispatch
    v = dispatch.verified
    tokens = dict(dispatch.tokens)
    other, io = others(v, sites, tokens)
    for s in sites:
        tokens[s.name] = measure(s, v, built.kernels.lowered.model, other, io[s.name],
                                 str(built.check_path), tokens[s.name], ctx)
    left = False
    for s in sites:
        s.dispatch = tokens[s.name]
        if not s.dispatch.kernel:
            leave(s, slower(s, s.dispatch))
            left = True
    return Dispatch(refresh(v, ctx) if left else v, tokens, dispatch.merged)
