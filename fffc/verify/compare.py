"""Running models in ONNX Runtime on probe inputs and measuring how far outputs are apart.

Error metric everywhere: max|got − want| / max(max|want|, 1e-6) ≤ rtol
(``fffc.contract.tolerances``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from ..contract.errors import ModelLoadError, UnsupportedModelError
from ..frontend.load import initializer_bytes

# a model with more initializer bytes reaches ONNX Runtime as a file and its external data,
# written one tensor at a time: in memory, it would be serialized into a protobuf and that
# protobuf into bytes, two copies of its weights beside the session's own
THROUGH_FILES = 64 << 20

# what ONNX Runtime raises for a model it cannot load or run (its own exception classes)
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    v for v in vars(ort_errors).values() if isinstance(v, type) and issubclass(v, Exception))


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    ok: bool


def worse(a: Comparison, b: Comparison) -> Comparison:
    """The combined verdict of two comparisons: largest errors, ok only if both are."""
    return Comparison(max(a.max_abs, b.max_abs), max(a.max_rel, b.max_rel), a.ok and b.ok)


def compare(got: np.ndarray, want: np.ndarray, rtol: float,
            slack: np.ndarray | None = None) -> Comparison:
    """Max abs error, relative to max |want|; ``slack`` (elementwise) is error that is
    allowed on top (threshold modes: entries decided by rounding, ``reference.teal_ffn``)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return Comparison(float("inf"), float("inf"), False)
    if want.size == 0:
        return Comparison(0.0, 0.0, True)
    err = np.abs(got - want)
    if slack is not None:
        err = np.maximum(err - np.asarray(slack, dtype=np.float64).reshape(err.shape), 0.0)
    max_abs = float(np.max(err))
    max_rel = max_abs / max(float(np.max(np.abs(want))), 1e-6)
    return Comparison(max_abs, max_rel, bool(np.isfinite(max_rel) and max_rel <= rtol))


def session(model: onnx.ModelProto | ir.Model | str, threads: int = 0,
            register: str | None = None,
            options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session of a model (a path, or in memory); ``register`` is a custom-op library
    to load first. A model of more than ``THROUGH_FILES`` bytes of weights goes through a
    temporary folder with its weights as external data."""
    so = options or ort.SessionOptions()
    if options is None:
        so.log_severity_level = 4  # failures arrive as exceptions, which fffc reports in one line
    if threads:
        so.intra_op_num_threads = threads
    if register:
        so.register_custom_ops_library(register)
    if isinstance(model, str):
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    if initializer_bytes(model) > THROUGH_FILES:
        with tempfile.TemporaryDirectory(prefix="fffc-session-") as tmp:
            path = Path(tmp) / "model.onnx"
            if isinstance(model, onnx.ModelProto):  # wraps its tensors, copies none
                model = ir.serde.deserialize_model(model)
            ir.save(model, str(path), external_data=f"{path.name}.data")
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def original_session(proto: onnx.ModelProto, path: str | Path | None,
                     model: onnx.ModelProto | ir.Model | None = None) -> ort.InferenceSession:
    """A session of ``model`` (the user's ``proto`` or a copy of it fffc exposed outputs of;
    default ``proto``). Where ONNX Runtime refuses the user's model itself, a typed error:
    UnsupportedModelError for what its CPU provider does not implement, ModelLoadError for
    a model it finds invalid; where only fffc's copy is refused, ONNX Runtime's error."""
    try:
        return session(proto if model is None else model)
    except ORT_ERRORS as e:
        refused = e
        if model is not None:
            try:
                session(proto)
            except ORT_ERRORS as e2:
                refused = e2
            else:
                raise
    first = str(refused).strip().splitlines()[0] if str(refused).strip() else \
        type(refused).__name__
    if isinstance(refused, ort_errors.NotImplemented | ort_errors.Fail):
        raise UnsupportedModelError(f"ONNX Runtime's CPU provider cannot run the original "
                                    f"model, which fffc runs to verify and calibrate "
                                    f"({first[:300]})", path=path) from refused
    raise ModelLoadError(f"ONNX Runtime refuses the original model ({first[:300]})",
                         path=path) from refused


def run(sess: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]],
        outputs: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    return [sess.run(list(outputs) if outputs else None, f) for f in feeds]


def compare_runs(got: list[list[np.ndarray]], want: list[list[np.ndarray]],
                 rtol: float) -> Comparison:
    """The worst comparison over every feed and every output."""
    worst = Comparison(0.0, 0.0, True)
    for g_outs, w_outs in zip(got, want, strict=True):
        for g, w in zip(g_outs, w_outs, strict=True):
            worst = worse(worst, compare(g, w, rtol))
    return worst
