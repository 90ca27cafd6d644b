"""The first stages, which ``fffc inspect`` runs alone and ``compile`` and ``calibrate``
start from: load → canonicalize → detect."""

from __future__ import annotations

from pathlib import Path

from ..contract.analysis import Analysis
from . import canonicalize, detect, load
from .context import Context, Reporter, quiet

STAGES = (load, canonicalize, detect)


def analyze(path: str | Path, report: Reporter = quiet,
            ctx: Context | None = None) -> Analysis:
    """Every FFN site of the model at ``path`` and every near miss (``ctx``: a compile's
    context, for its dumps)."""
    result = path
    ctx = ctx or Context(report=report)
    for stage in STAGES:
        result = stage.run(result, ctx)
    return result
