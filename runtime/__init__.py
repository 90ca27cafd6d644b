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

import numpy as np
import onnxruntime as ort

from .integrity import ArtifactError, inside, loadable, verify

__all__ = ["NUMPY_TYPES", "ArtifactError", "InferenceSession", "check", "manifest",
           "model_path", "register", "shim_path"]

DEFAULT_MODEL = "model.onnx"
DEFAULT_SHIM = "libfffc_ops.so"
# Session config entry recording the shim registered on a SessionOptions: registering the
# same custom-op domain twice fails session creation ("Domain already set in registry"),
# and ORT cannot be asked which libraries an options object already holds.
_REGISTERED_KEY = "fffc.shim_library"

# ONNX Runtime's tensor type names (``NodeArg.type``) → the NumPy type of such a tensor
NUMPY_TYPES: dict[str, type] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
    "tensor(string)": np.bytes_,
}


def _artifact_dir(artifact: str | Path) -> Path:
    path = Path(artifact)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{path}: expected an fffc artifact directory, but it {what}")
    return path


def _manifest(artifact: Path) -> dict:
    """``manifest.json`` of the artifact; {} when there is none (defaults apply)."""
    path = artifact / "manifest.json"
    if not path.exists():
        if not (artifact / DEFAULT_MODEL).exists():
            raise FileNotFoundError(
                f"{artifact}: not an fffc artifact (no manifest.json and no {DEFAULT_MODEL})")
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return manifest


def manifest(artifact: str | Path) -> dict:
    """The artifact folder's manifest ({} for a folder without one)."""
    return _manifest(_artifact_dir(artifact))


def model_path(artifact: str | Path) -> Path:
    """The artifact's ONNX model (manifest key ``model``, default ``model.onnx``)."""
    artifact = _artifact_dir(artifact)
    path = inside(artifact, _manifest(artifact).get("model", DEFAULT_MODEL), "model")
    if not path.exists():
        raise FileNotFoundError(f"{artifact}: model {path.name} is missing")
    return path


def shim_path(artifact: str | Path) -> Path | None:
    """The artifact's custom-op library, or None when it has none (no site was lowered).

    Manifest key ``shim`` (null: no shim); without the key, ``libfffc_ops.so`` if present.
    """
    artifact = _artifact_dir(artifact)
    manifest = _manifest(artifact)
    if "shim" not in manifest:
        default = artifact / DEFAULT_SHIM
        return default if default.exists() else None
    name = manifest["shim"]
    if name is None:
        return None
    path = inside(artifact, name, "shim")
    if not path.exists():
        raise FileNotFoundError(f"{artifact}: shim library {name} is missing")
    return path


def check(artifact: str | Path) -> None:
    """The artifact's files are the ones its manifest lists (``integrity``): an
    ArtifactError naming the first that is not."""
    artifact = _artifact_dir(artifact)
    verify(artifact, _manifest(artifact))


def register(sess_options: ort.SessionOptions, artifact: str | Path,
             check_files: bool = True) -> ort.SessionOptions:
    """Register the artifact's shim on ``sess_options`` (returned for chaining), after
    checking every file against the manifest's digests (``check_files=False``: not).

    Idempotent: options that already carry this shim are left as they are, so one
    SessionOptions can open several sessions of the same artifact.
    """
    if check_files:
        check(artifact)
    shim = shim_path(artifact)
    if shim is None:
        return sess_options
    shim = shim.resolve()
    try:
        registered = sess_options.get_session_config_entry(_REGISTERED_KEY)
    except RuntimeError:  # ORT raises for an absent key
        registered = None
    if registered == str(shim):
        return sess_options
    if registered is not None:
        raise ValueError(f"these SessionOptions already hold another fffc shim ({registered}); "
                         "use a fresh SessionOptions per artifact")
    loadable(shim)
    sess_options.register_custom_ops_library(str(shim))
    sess_options.add_session_config_entry(_REGISTERED_KEY, str(shim))
    return sess_options


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` over an fffc artifact directory, kernels registered
    once its files are checked against the manifest (``check_files=False``: not checked)."""

    def __init__(self, artifact: str | Path, sess_options: ort.SessionOptions | None = None,
                 providers: list[Any] | None = None, check_files: bool = True,
                 **kwargs: Any) -> None:
        artifact = _artifact_dir(artifact)
        options = sess_options if sess_options is not None else ort.SessionOptions()
        register(options, artifact, check_files)
        self.artifact = artifact
        super().__init__(str(model_path(artifact)), options,
                         providers=providers or default_providers(artifact), **kwargs)


def default_providers(artifact: str | Path) -> list[str]:
    """CUDA first for a ``--target cuda`` artifact when this onnxruntime has the CUDA EP
    (its fffc kernels run there; the CPU kernels serve whatever stays on the CPU)."""
    target = _manifest(_artifact_dir(artifact)).get("target") or {}
    if not isinstance(target, dict):
        raise ArtifactError(f"{artifact}: manifest key target is {target!r}, not an object")
    family = target.get("family")
    if family == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
