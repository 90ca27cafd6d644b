"""fffc.runtime: run an fffc artifact in ONNX Runtime (needs only onnxruntime).

``InferenceSession(artifact_dir)`` is a drop-in for ``onnxruntime.InferenceSession``: it
registers the artifact's shim library (``libfffc_ops.so``, kernels linked in, no TVM
and no Python at run time) on the session options and opens the artifact's model. The
C++ sources of that library live in ``src/`` next to this file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime as ort

__all__ = ["InferenceSession", "model_path", "register", "shim_path"]


def _manifest(artifact: Path) -> dict:
    path = artifact / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{artifact}: not an fffc artifact (no manifest.json)")
    return json.loads(path.read_text())


def model_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact / _manifest(artifact).get("model", "model.onnx")


def shim_path(artifact: str | Path) -> Path | None:
    """The artifact's custom-op library, or None when no site was lowered."""
    artifact = Path(artifact)
    name = _manifest(artifact).get("shim")
    if name is None:
        return None
    path = artifact / name
    if not path.exists():
        raise FileNotFoundError(f"{artifact}: shim library {name} is missing")
    return path


def register(sess_options: ort.SessionOptions, artifact: str | Path) -> ort.SessionOptions:
    """Register the artifact's shim on ``sess_options`` (returned for chaining)."""
    shim = shim_path(artifact)
    if shim is not None:
        sess_options.register_custom_ops_library(str(shim))
    return sess_options


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` over an fffc artifact directory, kernels registered."""

    def __init__(self, artifact: str | Path, sess_options: ort.SessionOptions | None = None,
                 providers: list[Any] | None = None, **kwargs: Any) -> None:
        artifact = Path(artifact)
        if not artifact.is_dir():
            raise FileNotFoundError(f"{artifact}: expected an fffc artifact directory")
        options = sess_options if sess_options is not None else ort.SessionOptions()
        register(options, artifact)
        self.artifact = artifact
        super().__init__(str(model_path(artifact)), options,
                         providers=providers or ["CPUExecutionProvider"], **kwargs)
