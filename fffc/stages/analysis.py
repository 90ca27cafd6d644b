"""The first stages, which ``fffc inspect`` runs alone and ``compile`` and ``calibrate``
start from: load → canonicalize → detect."""

from __future__ import annotations

from pathlib import Path

from ..contract.analysis import Analysis
from . import canonicalize, detect, load
from .context import Context, Notifier, Reporter, quiet, silent

STAGES = (load, canonicalize, detect)


def analyze(path: str | Path, report: Reporter = quiet,
            ctx: Context | None = None, note: Notifier = silent) -> Analysis:
    """Every FFN site of the model at ``path`` and every near miss (``ctx``: a compile's
    context, for its dumps; ``note``: where notes go as they arise, also kept in
    ``Analysis.notes``)."""
    result = path
    ctx = ctx or Context(report=report, note=note)
    for stage in STAGES:
        result = stage.run(result, ctx)
    return result
