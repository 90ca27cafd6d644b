"""Side-by-side timing of an artifact against its original model in ONNX Runtime.

Both sessions get the same options and thread count; they are timed in alternating blocks
(``fffc.timing``: a pause, one untimed call, a few timed calls) so that a noisy shared
machine slows both alike while neither runs against the other's spinning threads, and
the ratio of medians is reported. Outputs are compared on the same feeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from . import timing
from .contract.errors import ModelLoadError, UsageError
from .verify import compare as verify
from .verify.compare import ORT_ERRORS
from .verify.feeds import probe_inputs


@dataclass
class BenchRow:
    tokens: int
    original_ms: float
    fffc_ms: float
    speedup: float
    max_rel_err: float


def _symbolic_dims(proto: onnx.ModelProto) -> int:
    inits = {i.name for i in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name not in inits:
            return sum(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)
    return 0


def feeds_for_tokens(proto: onnx.ModelProto, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed with ``tokens`` tokens: batch 1 × sequence ``tokens`` (or a flat token dim)."""
    if _symbolic_dims(proto) >= 2:
        return probe_inputs(proto, 1, tokens, seed, count=1)[0]
    return probe_inputs(proto, tokens, tokens, seed, count=1)[0]


def source_model(artifact: Path, manifest: dict, original: Path | None) -> Path:
    """The original model the artifact was compiled from, checked against its hash."""
    if original is not None:
        return original
    from .runtime import ArtifactError

    source = manifest.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        raise ArtifactError(f"{artifact}: the manifest does not name the original model "
                            "(source.path); pass --original PATH")
    src = Path(source["path"])
    if not src.exists():
        raise UsageError(f"original model {src} not found; pass --original PATH", path=artifact)
    return src


def bench(artifact: str | Path, tokens: Sequence[int] = (1, 8, 128), threads: int = 2,
          repeat: int = 30, warmup: int = 3, original: str | Path | None = None) -> list[BenchRow]:
    """Time original vs compiled model at each token count; one row per count."""
    from . import runtime

    artifact = Path(artifact)
    if any(n < 1 for n in tokens) or repeat < 1 or threads < 0:
        raise UsageError(f"expected token counts >= 1, >= 1 timed call and >= 0 threads (0: "
                         f"ONNX Runtime's default), got {list(tokens)}, {repeat}, {threads}")
    if not (artifact / "manifest.json").is_file():
        raise UsageError("not an fffc artifact (no manifest.json)", path=artifact)
    manifest = runtime.manifest(artifact)
    src = source_model(artifact, manifest, Path(original) if original else None)
    try:
        proto = onnx.load(str(src), format="protobuf", load_external_data=False)
    except (OSError, ValueError, DecodeError) as e:
        raise ModelLoadError(f"cannot read the original model ({e})", path=src) from e

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    try:
        base = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:
        raise ModelLoadError(f"ONNX Runtime refuses the original model ({_first(e)})",
                             path=src) from e
    so2 = ort.SessionOptions()
    so2.intra_op_num_threads = threads
    so2.log_severity_level = 3
    try:
        compiled = runtime.InferenceSession(artifact, so2, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:  # its files passed the manifest's check
        raise runtime.ArtifactError(f"{artifact}: ONNX Runtime refuses the artifact's model "
                                    f"({_first(e)})") from e

    rows = []
    for n in tokens:
        try:
            feed = feeds_for_tokens(proto, n)
        except MemoryError as e:
            raise UsageError(f"a feed of {n} tokens does not fit in memory") from e
        try:
            want = base.run(None, feed)
        except ORT_ERRORS as e:
            raise UsageError(f"the original model fails on a feed of {n} tokens made for the "
                             f"artifact ({_first(e)}): is it the model the artifact was "
                             "compiled from?", path=src) from e
        try:
            got = compiled.run(None, feed)
        except ORT_ERRORS as e:
            if original is not None:  # the feeds are made for the model the user named
                raise UsageError(f"the artifact fails on a feed of {n} tokens made for "
                                 f"{src} ({_first(e)}): is it the model the artifact was "
                                 "compiled from?", path=artifact) from e
            raise runtime.ArtifactError(f"{artifact}: the artifact fails on a feed of {n} "
                                        f"tokens the original model runs ({_first(e)})") from e
        err = verify.compare_runs([got], [want], float("inf")).max_rel
        for _ in range(warmup):
            base.run(None, feed)
            compiled.run(None, feed)
        inner = min(5, repeat)
        med = timing.medians_ms({"base": lambda f=feed: base.run(None, f),
                                 "fffc": lambda f=feed: compiled.run(None, f)},
                                rounds=-(-repeat // inner), inner=inner)
        rows.append(BenchRow(n, med["base"], med["fffc"], med["base"] / med["fffc"], err))
    return rows


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def rows_to_json(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def plot(rows: list[BenchRow], path: str | Path, title: str) -> Path:
    """Time per token vs token count, original vs fffc (log-log), written to ``path``.

    Needs matplotlib (``pip install 'fffc[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UsageError("--plot needs matplotlib: pip install 'fffc[plot]'") from e
    tokens = [r.tokens for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(tokens, [r.original_ms * 1e3 / r.tokens for r in rows], "o-", label="original (ONNX Runtime)")
    ax.plot(tokens, [r.fffc_ms * 1e3 / r.tokens for r in rows], "s-", label="fffc artifact")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per call")
    ax.set_ylabel("µs per token")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    try:  # the format given: matplotlib would append ".png" to a name without a suffix
        fig.savefig(path, format=path.suffix.removeprefix(".").lower() or "png")
    except (OSError, ValueError) as e:  # a missing folder, a directory, no permission
        raise UsageError(f"--plot: cannot write the plot ({getattr(e, 'strerror', None) or e})",
                         path=path) from e
    finally:
        plt.close(fig)
    return path
