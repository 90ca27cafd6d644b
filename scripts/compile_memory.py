"""Peak memory of ``fffc compile`` per stage, against ``fffc.plan.memory``'s estimates.

    python scripts/compile_memory.py MODEL [--target x86] [-o OUT] [--compile-arg=--flag ...]

Runs the compile in this process with ``--max-memory none`` (Linux): each stage's peak is
the process's peak resident set while it ran (``VmHWM``, reset through
``/proc/self/clear_refs`` when the stage starts), less the resident set before the model
was read (what the estimates count); the whole run's peak is the largest stage's plus the
resident set at the start (the interpreter and its imports). Prints one line per stage,
then the loading estimate beside the largest of load, canonicalize and detect, and the
verification estimate beside the largest of the stages after them (the artifact check's
included, which the estimate does not name but must cover). Figures are machine- and
library-dependent: the estimates must stay above them, not match them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    raise KeyError(key)


def rss() -> int:
    return _status("VmRSS")


class Peak:
    """The peak resident set since the last ``reset``: Linux's ``VmHWM``, reset through
    ``/proc/self/clear_refs`` (no sampling, so no short peak is missed)."""

    def reset(self) -> int:
        """The peak so far, and a new window from now."""
        peak = _status("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")
        return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--target", default="x86")
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help="the artifact folder (default: a temporary one, removed)")
    ap.add_argument("--compile-arg", action="append", default=[],
                    help="an fffc compile flag to pass on (repeatable; e.g. "
                         "--compile-arg=--no-crossover)")
    args = ap.parse_args(argv)

    from fffc import cli, pipeline
    from fffc.plan import memory
    from fffc.stages import plan as plan_stage

    base = rss()
    sampler = Peak()
    sampler.reset()
    peaks: list[tuple[str, int]] = []
    model_file = args.model / "model.onnx" if args.model.is_dir() else args.model
    estimates: dict[str, int] = {"loading": memory.loading(model_file).bytes}

    planned = plan_stage.run

    def plan_run(analysed, ctx):  # the verification estimate, from the analysed model
        estimates["verification"] = memory.verification(analysed, ctx.options).bytes
        return planned(analysed, ctx)

    plan_stage.run = plan_run

    @contextlib.contextmanager
    def report(name: str) -> Iterator[None]:
        sampler.reset()
        t = time.perf_counter()
        try:
            yield
        finally:
            peaks.append((name, sampler.reset() - base))
            print(f"{name:>24}: peak {peaks[-1][1] / MIB:7.0f} MiB above the start "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)

    compile_model = pipeline.compile_model

    def measured(path, out, options, _report, note):
        return compile_model(path, out, options, report, note)

    pipeline.compile_model = measured
    with tempfile.TemporaryDirectory(prefix="fffc-memory-") as tmp:
        out = args.output or Path(tmp) / "out"
        rc = cli.main(["compile", str(args.model), "--target", args.target, "-o", str(out),
                       "--force", "--max-memory", "none", *args.compile_arg])
    top = max((p for _, p in peaks), default=0) + base
    print(f"process peak: {top / MIB:.0f} MiB (at the start {base / MIB:.0f} MiB)")
    first = ("load", "canonicalize", "detect")
    load = max((p for n, p in peaks if n in first), default=0)
    later = max((p for n, p in peaks if n not in first), default=0)
    for stage, got in (("loading", load), ("verification", later)):
        est = estimates.get(stage)
        if est is not None:
            print(f"{stage:>13}: estimate {est / MIB:7.0f} MiB, measured {got / MIB:7.0f} MiB "
                  f"({est / max(got, 1):.2f}x, {'ok' if est >= got else 'UNDER'})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
