"""fffc: conditional-computation FFNs in ONNX models, compiled with TVM, run in ONNX Runtime.

Python API (the CLI is a thin layer over these)::

    import fffc
    found = fffc.inspect("model.onnx")                  # sites + near misses
    result = fffc.compile("model.onnx", "model.fffc", fffc.CompileOptions(target="x86"))
    rows = fffc.bench("model.fffc", tokens=[1, 8, 128])
    calib = fffc.calibrate("model.onnx", "feeds/", output="model.calib.json")
    calib = fffc.calibrate("genai_folder", prompts="prompts.txt", generate=32)  # decode rows
    import fffc.runtime; sess = fffc.runtime.InferenceSession("model.fffc")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .contract.config import CompileOptions
from .contract.errors import FffcError, UsageError
from .contract.version import VERSION

if TYPE_CHECKING:
    from .bench import BenchRow
    from .contract.analysis import Analysis
    from .pipeline import CompileResult

__version__ = VERSION


def inspect(model: str | Path) -> Analysis:
    """Find every FFN site (with the lowering fffc would choose) and every near miss."""
    from .pipeline import analyze
    from .plan.decide import plan

    a = analyze(model)
    plan(a.sites)
    return a


def compile(model: str | Path, output: str | Path | None = None,
            options: CompileOptions | None = None) -> CompileResult:
    """Compile ``model`` into a verified artifact directory (see ``fffc compile``)."""
    from .pipeline import compile_model

    return compile_model(model, output, options)


def calibrate(model: str | Path, data: str | Path | None = None, *, synthetic: int = 0,
              prompts: str | Path | Sequence[str] | None = None, generate: int = 32,
              tokenizer: str | Path | None = None, rows: str = "decode",
              predictor_rank: int = 0, center: str = "mode",
              token_mask: str | None = "attention_mask", levels: Sequence[float] | None = None,
              budget: str | None = None, output: str | Path | None = None,
              force: bool = False, max_memory: str | None = None, **options) -> dict:
    """Per-site activation statistics over ``data`` (see ``fffc calibrate``), and predictors
    when ``predictor_rank`` > 0; thresholds around per-channel centers (``center``: "mode",
    "median", or "none" for TEAL's |v|), padding rows (``token_mask`` 0) left out; written
    to ``output`` (JSON + ``.npz``) when given; ``levels``: the target sparsities thresholds
    are written for (default every 0.05); ``budget``: also search the allocation (as
    ``fffc compile --budget``) on the same feeds and store it, for ``compile`` without a
    budget. A decoder with a KV cache (an ``.onnx`` file or an ONNX Runtime GenAI folder)
    can instead be calibrated on ``prompts`` (a file of one prompt per line, or a list of
    prompts), tokenized with ``tokenizer`` (default: the ``tokenizer.json`` next to the
    model) and each generated greedily for ``generate`` new tokens: the statistics are made
    of ``rows`` "decode" (the generated tokens' calls, the default), "prefill" (the
    prompts') or "all". ``options``: ``seq`` (tokens per synthetic feed), ``samples``,
    ``predictor_sparsity``, ``progress`` (called with the call count) of
    ``fffc.plan.calibration.calibrate``. ``max_memory``: as ``fffc compile --max-memory``
    (``fffc.plan.memory.budget``): a model whose loading or calibration would need more is
    refused (``MemoryBudgetError``) before it is read, or before the calibration runs."""
    from .frontend.genai import model_file
    from .pipeline import analyze
    from .plan import allocate, calibration, generation
    from .stages.context import Context

    if budget is not None:
        allocate.parse_budget(budget)  # a bad budget fails before the passes over the data
    try:
        used = generation.Rows(rows)
    except ValueError as e:
        raise UsageError(f"rows must be one of {[r.value for r in generation.Rows]}, "
                         f"got {rows!r}") from e
    path = model_file(model)
    ctx = Context(options=CompileOptions(max_memory=max_memory))
    limit = ctx.memory_budget()  # a bad max_memory: refused before the model is read
    a = analyze(path, ctx=ctx)
    given = None
    if prompts is not None:
        generation.decoder_feeds(a)  # an encoder is refused before its tokenizer is sought
        given = generation.prompts(path, prompts, generate, tokenizer)
    result = calibration.calibrate(a, data, synthetic=synthetic, prompts=given, rows=used,
                                   predictor_rank=predictor_rank, center=center,
                                   token_mask=token_mask,
                                   sparsities=levels or calibration.SPARSITIES,
                                   max_memory=limit, **options)
    if budget is not None:
        feeds = calibration.calibration_feeds(a, data, synthetic,
                                              options.get("seq", calibration.SEQ), given, used)
        result["allocation"] = allocate.stored(a, result, budget, list(feeds))
    if output is not None:
        calibration.write(result, output, force=force)
    return result


def bench(artifact: str | Path, tokens=(1, 8, 128), threads: int = 2) -> list[BenchRow]:
    """Original vs compiled model, side by side in ONNX Runtime."""
    from .bench import bench as _bench

    return _bench(artifact, tokens, threads=threads)


__all__ = ["CompileOptions", "FffcError", "__version__", "bench", "calibrate", "compile",
           "inspect"]
