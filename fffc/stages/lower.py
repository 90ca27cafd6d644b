"""Stage: every site becomes its ``ai.fffc`` node (with its fallback function) or stays in
standard ops; the model is written into the artifact being built, where its layout says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from .. import frontend, passes
from ..package.output import clear
from .context import Context
from .dispatch import Dispatch

NAME = "lower"


@dataclass
class Lowered:
    dispatch: Dispatch
    model: onnx.ModelProto
    path: Path  # the model in the artifact being built

    @property
    def verified(self):
        return self.dispatch.verified


def run(dispatch: Dispatch, ctx: Context) -> Lowered:
    clear(ctx.staging)
    return write(dispatch, ctx)


def write(dispatch: Dispatch, ctx: Context) -> Lowered:
    """The model lowered as ``dispatch`` says, written into the artifact being built (over
    an earlier one: the measured crossovers change the model, not the kernels)."""
    final = frontend.copy(dispatch.verified.working)
    passes.lower(final, dispatch.lowerings())
    proto = ir.serde.serialize_model(final)
    ctx.dump.model("05-rewritten.onnx", proto)
    path = ctx.layout.write_model(final, ctx.staging)
    return Lowered(dispatch, proto, path)
