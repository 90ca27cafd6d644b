"""Decode speed of a compiled ONNX Runtime GenAI folder against the folder it was compiled
from, in ``onnxruntime_genai``: greedy generation of ``generate`` tokens after a prompt of
``prompt`` random token ids, both models opened with the same intra-op thread count.

A Generator runs the prompt in ``append_tokens``; each ``generate_next_token`` picks the next
token from the last logits, running the model on the previous token first when they are not
there yet, so the first call after the prompt runs no model. Prefill is timed from
``append_tokens`` to the first token, decode over the other ``generate - 1`` tokens: one
decode step of the model each. End of sequence is held off (``min_length``), so every run
decodes as many tokens. Runs alternate between the two models, each after a pause in which
the other's threads park (``fffc.timing``), so drift of a shared machine hits both alike;
results give the median and the range over the runs.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from . import runtime, timing
from .contract.errors import ArtifactCheckError, FffcError, ModelLoadError, UsageError
from .frontend import genai
from .frontend.interface import GENAI_CONFIG
from .package.layout import LIBRARY_KEY, MANIFEST


@dataclass(frozen=True)
class Run:
    prefill_ms: float
    decode_tokens_per_s: float
    tokens: tuple[int, ...]  # the generated ids, prompt left out


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class DecodeBench:
    """Runs of the original folder and of the compiled one, in the order they were timed."""

    prompt: int
    generate: int
    threads: int
    original: tuple[Run, ...]
    fffc: tuple[Run, ...]

    def sides(self) -> tuple[tuple[str, tuple[Run, ...]], ...]:
        """(label, runs) of the original folder and of the compiled one, in that order."""
        return (("original", self.original), ("fffc", self.fffc))

    @staticmethod
    def decode(runs: tuple[Run, ...]) -> Spread:
        return Spread.of([r.decode_tokens_per_s for r in runs])

    @staticmethod
    def prefill(runs: tuple[Run, ...]) -> Spread:
        return Spread.of([r.prefill_ms for r in runs])

    @property
    def speedup(self) -> float:
        """Decode tokens/s of the compiled folder over the original's (ratio of medians)."""
        return self.decode(self.fffc).median / self.decode(self.original).median

    @property
    def identical(self) -> bool:
        """Whether both generated the same token ids (greedy, same prompt)."""
        return self.original[0].tokens == self.fffc[0].tokens

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "generate": self.generate, "threads": self.threads,
                "speedup": self.speedup, "identical_tokens": self.identical,
                **{label: {"decode_tokens_per_s": asdict(self.decode(runs)),
                           "prefill_ms": asdict(self.prefill(runs))}
                   for label, runs in self.sides()}}


def genai_section(manifest: dict) -> dict | None:
    """The manifest's record of the GenAI folder an artifact was compiled from, if any."""
    return manifest.get("genai")


def is_genai_artifact(artifact: str | Path) -> bool:
    """Whether ``artifact`` is a compiled GenAI folder (what ``bench_decode`` times)."""
    path = Path(artifact) / MANIFEST
    try:
        return genai_section(json.loads(path.read_text())) is not None
    except (OSError, ValueError, AttributeError):
        return False


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise UsageError("timing a GenAI folder needs onnxruntime-genai: "
                         "pip install 'fffc[genai]'") from e
    return og


def _model(og, folder: Path, threads: int):
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads}}}}))
    return og.Model(config)


def _own_libraries_only(folder: genai.GenAIFolder) -> None:
    """The original folder may name no native library outside itself (what GenAI itself
    refuses, and what fffc never loads): a ``custom_ops_library`` is a relative path
    inside the folder."""
    options = folder.config["model"]["decoder"].get("session_options")
    lib = options.get(LIBRARY_KEY) if isinstance(options, dict) else None
    if lib is None:
        return
    rel = PurePosixPath(str(lib).replace("\\", "/"))
    if not isinstance(lib, str) or not lib or rel.is_absolute() or ".." in rel.parts:
        raise UsageError(f"the decoder's session_options in {GENAI_CONFIG} name "
                         f"{LIBRARY_KEY} {lib!r}, not a path inside the folder",
                         path=folder.folder)


def _opened(og, folder: Path, threads: int, error: type[FffcError]):
    """The folder opened in onnxruntime-genai; its refusal (a RuntimeError, whatever the
    cause) as ``error`` in one line."""
    try:
        return _model(og, folder, threads)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "RuntimeError"
        raise error(f"onnxruntime-genai cannot open the folder: {first}", path=folder) from e


def _run(og, model, prompt: list[int], generate: int) -> Run:
    params = og.GeneratorParams(model)
    length = len(prompt) + generate
    params.set_search_options(max_length=length, min_length=length, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(prompt)
    gen.generate_next_token()
    t1 = time.perf_counter()
    for _ in range(generate - 1):
        gen.generate_next_token()
    t2 = time.perf_counter()
    tokens = tuple(int(t) for t in gen.get_sequence(0)[len(prompt):])
    return Run((t1 - t0) * 1e3, (generate - 1) / (t2 - t1), tokens)


def bench_decode(artifact: str | Path, prompt: int = 128, generate: int = 128,
                 threads: int = 2, repeat: int = 5, original: str | Path | None = None,
                 seed: int = 0) -> DecodeBench:
    """Time greedy generation in the compiled GenAI folder ``artifact`` and in the folder it
    was compiled from (``original`` if it moved), ``repeat`` runs each after one untimed."""
    artifact = Path(artifact)
    section = genai_section(runtime.manifest(artifact))
    if section is None:
        raise UsageError("not a compiled GenAI folder (its manifest has no genai section)",
                         path=artifact)
    if not isinstance(section, dict) or not isinstance(section.get("source"), str):
        raise runtime.ArtifactError(f"{artifact}: the manifest's genai section does not name "
                                    "the folder it was compiled from (genai.source)")
    source = Path(original) if original is not None else Path(section["source"])
    if not (source / GENAI_CONFIG).exists():
        raise UsageError(f"original GenAI folder {source} not found; pass --original PATH",
                         path=artifact)
    if prompt < 1 or generate < 2 or repeat < 1 or threads < 0:
        raise UsageError(f"expected a prompt of >= 1 token, >= 2 generated tokens, >= 1 run "
                         f"and >= 0 threads, got {prompt}, {generate}, {repeat}, {threads}")
    runtime.check(artifact)  # onnxruntime_genai loads the shim it names: its files first
    config = genai.read(artifact).config["model"]
    vocab, context = config.get("vocab_size"), config.get("context_length", prompt + generate)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (vocab, context)):
        raise runtime.ArtifactError(f"{artifact}: {GENAI_CONFIG}'s model.vocab_size "
                                    f"{vocab!r} and context_length {context!r}: expected "
                                    "positive integers")
    if prompt + generate > context:
        raise UsageError(f"prompt + generated tokens ({prompt + generate}) exceed the model's "
                         f"context length {context}", path=artifact)
    _own_libraries_only(genai.read(source))
    og = _og()
    ids = np.random.default_rng(seed).integers(0, vocab, prompt).tolist()
    models = {"original": _opened(og, source, threads, ModelLoadError),
              "fffc": _opened(og, artifact, threads, ArtifactCheckError)}
    runs: dict[str, list[Run]] = {k: [] for k in models}
    keys = list(models)
    for r in range(repeat + 1):  # round 0 warms both up, untimed
        for key in keys[r % 2:] + keys[:r % 2]:
            time.sleep(timing.SETTLE_S)
            try:
                run = _run(og, models[key], ids, generate)
            except RuntimeError as e:
                error, folder = ((ModelLoadError, source) if key == "original"
                                 else (ArtifactCheckError, artifact))
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "?"
                raise error(f"onnxruntime-genai fails generating from the folder: {first}",
                            path=folder) from e
            if r:
                runs[key].append(run)
    return DecodeBench(prompt, generate, threads, tuple(runs["original"]), tuple(runs["fffc"]))
