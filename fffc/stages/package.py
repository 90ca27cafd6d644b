"""Stage: the folder completed as its layout says (a GenAI folder's other files and its
config), the manifest written, and the finished artifact moved into place."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..contract.sites import NearMiss, Site
from ..package.layout import MANIFEST
from ..package.manifest import manifest
from ..package.output import install
from .check import Checked
from .context import Context

NAME = "package"


@dataclass
class CompileResult:
    artifact: Path
    sites: list[Site]
    near_misses: list[NearMiss]
    manifest: dict = field(default_factory=dict)


def run(checked: Checked, ctx: Context) -> CompileResult:
    v = checked.verified
    a = v.analysis
    shim = checked.shim.path
    ctx.layout.complete(ctx.staging, shim is not None)
    m = manifest(source=a.path, options=ctx.options, target=ctx.target,
                 library=checked.shim.kernels.library, shim=shim,
                 staging=ctx.staging, layout=ctx.layout, sites=a.sites,
                 near_misses=a.near_misses,
                 canonical_rewrites=a.canonical_rewrites, report=checked.report,
                 feeds=v.feeds, calibration=v.planned.calibration)
    (ctx.staging / MANIFEST).write_text(json.dumps(m, indent=2, sort_keys=True))
    install(ctx.staging, ctx.out)
    return CompileResult(ctx.out, a.sites, a.near_misses, m)
