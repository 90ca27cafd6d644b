"""Stage: every FFN replaced by a marker and reported as a site; FFN-like regions no rule
matched reported with the reason."""

from __future__ import annotations

from .. import passes
from ..contract.analysis import Analysis
from .canonicalize import Canonical
from .context import Context

NAME = "detect"


def run(canonical: Canonical, ctx: Context) -> Analysis:
    with ctx.report(NAME):
        sites = passes.detect(canonical.working)
        misses = passes.near_misses(canonical.working)
    a = Analysis(canonical.path, canonical.proto, canonical.working, sites, misses,
                 canonical.rewrites, canonical.notes)
    ctx.dump.json("02-sites.json", a.to_json())
    return a
