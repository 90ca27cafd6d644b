"""Stage: read the model file, or a GenAI folder's decoder (every way it can be wrong is one
typed error)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import frontend
from ..frontend.genai import model_file
from ..plan import memory
from .context import Context

NAME = "load"


@dataclass
class Loaded:
    path: Path
    proto: onnx.ModelProto


def run(path: str | Path, ctx: Context) -> Loaded:
    path = model_file(path)
    if Path(path).is_file():  # before it is read (the loader reports any other path)
        memory.check(memory.loading(path), ctx.memory_budget(), path)
    with ctx.report(NAME):
        proto = frontend.load_proto(path)
    ctx.dump.model("00-loaded.onnx", proto)
    return Loaded(Path(path), proto)
