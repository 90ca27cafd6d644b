"""ONNX shape inference over the working model, its failures turned into one line for the user.

onnx_ir's ``ShapeInferencePass`` leaves the model unchanged when ONNX's inference raises, and
logs the exception with its traceback; ONNX Runtime GenAI's graphs (constants whose declared
shapes ONNX disputes next to contrib ops) and Optimum's merged decoders make it raise.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

_LOG = logging.getLogger(common_passes.ShapeInferencePass.__module__)
_LONGEST = 240  # characters of ONNX's message kept in the note


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured(logger: logging.Logger) -> Iterator[list[logging.LogRecord]]:
    """The records ``logger`` emits inside the block, kept from every other handler."""
    handler, propagate = _Records(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _infer(model: ir.Model, strict: bool) -> str | None:
    """ONNX shape inference in place; None, or the first line of why it failed."""
    with _captured(_LOG) as records:
        common_passes.ShapeInferencePass(strict_mode=strict)(model)
    for r in records:
        error = r.exc_info[1] if r.exc_info else None
        if error is not None:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return first if len(first) <= _LONGEST else first[:_LONGEST] + "…"
    return None


def infer_shapes(model: ir.Model) -> str | None:
    """ONNX shape inference in place (TorchScript exports carry few shapes). Where strict
    inference fails, the shapes it infers past the errors (non-strict mode). Returns None,
    or what the user should know then (one line)."""
    error = _infer(model, strict=True)
    if error is None:
        return None
    kept = ("continuing with the shapes it infers past the errors"
            if _infer(model, strict=False) is None else "continuing without inferred shapes")
    return f"ONNX shape inference failed on this graph ({error}); {kept}"


def forget_contradicting_identity_shapes(model: ir.Model) -> None:
    """Where an Identity's input and output are declared with different ranks (a broken
    value_info), forget the declaration of the side that is not a graph output: a declared
    shape is a hint, and onnx_ir's identity elimination refuses to merge the two."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1 \
                or len(node.outputs) != 1 or node.inputs[0] is None:
            continue
        i, o = node.inputs[0], node.outputs[0]
        if i.shape is not None and o.shape is not None and len(i.shape) != len(o.shape):
            if o.is_graph_output():
                i.shape = None
            else:
                o.shape = None
