"""Stage: one form for every exporter's variant (activations, linear layers, structured
projections), constants folded, dead nodes dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir

from .. import frontend, passes
from .context import Context
from .load import Loaded

NAME = "canonicalize"


@dataclass
class Canonical:
    path: Path
    proto: onnx.ModelProto  # as loaded
    working: ir.Model  # canonical form (canonical ops in the ai.fffc.canon domain)
    rewrites: dict[str, int]  # rewrites per canonical family
    notes: list[str] = field(default_factory=list)  # what the user should know (one line each)


def run(loaded: Loaded, ctx: Context) -> Canonical:
    notes: list[str] = []
    with ctx.report(NAME):
        working = frontend.to_ir(loaded.proto, loaded.path)
        rewrites = passes.canonicalize(working, notes)
    for note in notes:
        ctx.note(note)
    if ctx.dump.root:
        runnable = frontend.copy(working)
        passes.legalize(runnable)
        ctx.dump.model("01-canonical.onnx", runnable)
    return Canonical(loaded.path, loaded.proto, working, rewrites, notes)
