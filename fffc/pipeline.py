"""The compile pipeline: the ordered list of stages, and the one loop that repeats a build.

load → canonicalize → detect → plan (→ allocate, with --calibration) → verify sites →
dispatch → lower → codegen → shim → measure → check → package. Each stage (``fffc.stages``) takes the
previous stage's result and, with ``--dump``, writes its numbered dump
(``fffc.stages.context.DUMPS``). The build stages run again, at most ``MAX_ROUNDS``
times in all, while the artifact check finds sites whose kernels fail: those are left as
they were and the rest rebuilt. Nothing lands in the output folder unless every check
passed.
"""

from __future__ import annotations

from pathlib import Path

from .contract.analysis import Analysis
from .contract.config import CompileOptions
from .contract.errors import VerificationError
from .package.layout import Layout
from .package.output import default_output, prepare_output, staging
from .stages import (
    allocate,
    analysis,
    check,
    codegen,
    dispatch,
    lower,
    measure,
    package,
    plan,
    shim,
    verify_sites,
)
from .stages.analysis import analyze
from .stages.context import Context, Notifier, Reporter, quiet, silent
from .stages.package import CompileResult

ANALYSIS = analysis.STAGES  # load, canonicalize, detect
PREPARE = (plan, allocate, verify_sites, dispatch)
BUILD = (lower, codegen, shim, measure, check)  # repeated while the check fails sites
STAGES = (*ANALYSIS, *PREPARE, *BUILD, package)
MAX_ROUNDS = 2  # a site whose kernel fails the artifact check is dropped and the rest rebuilt

# analyze: the first stages alone (fffc.stages.analysis), what inspect and calibrate run
__all__ = ["STAGES", "Analysis", "CompileResult", "analyze", "compile_model"]


def compile_model(path: str | Path, out: str | Path | None = None,
                  options: CompileOptions | None = None,
                  report: Reporter = quiet, note: Notifier = silent) -> CompileResult:
    """``fffc compile``: write a verified artifact folder for ``options.target`` (for an
    ONNX Runtime GenAI folder, a GenAI folder: ``fffc.package.layout``)."""
    path = Path(path)
    out = Path(out) if out is not None else default_output(path)
    ctx = Context.for_compile(options or CompileOptions(), out, report, note)
    ctx.layout = Layout.for_source(path)
    prepare_output(out, ctx.options.force, ctx.layout.source)
    prepared = _run(PREPARE, analyze(path, ctx=ctx), ctx)
    with staging(out) as ctx.staging:
        for _ in range(MAX_ROUNDS):
            checked = _run(BUILD, prepared, ctx)
            if not checked.failed:
                return package.run(checked, ctx)
            prepared = check.retry(checked, ctx)
        raise VerificationError("artifact check still failing after dropping failed sites",
                                path=path)


def _run(stages, result, ctx: Context):
    for stage in stages:
        result = stage.run(result, ctx)
    return result
