"""ONNX Runtime GenAI model folders: a ``genai_config.json`` naming the decoder's ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

from ..contract.errors import ModelLoadError
from .interface import GENAI_CONFIG


def config(folder: Path) -> dict:
    """The folder's ``genai_config.json``, parsed."""
    path = folder / GENAI_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {GENAI_CONFIG} ({e})", path=path) from e


def model_file(path: str | Path) -> Path:
    """``path`` itself, or for a GenAI folder the decoder's ONNX file it names."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / GENAI_CONFIG).is_file():
        raise ModelLoadError(f"is a directory without {GENAI_CONFIG}, expected an .onnx file "
                             "or an ONNX Runtime GenAI model folder", path=path)
    try:
        name = config(path)["model"]["decoder"]["filename"]
    except (KeyError, TypeError) as e:
        raise ModelLoadError(f"{GENAI_CONFIG} names no model.decoder.filename",
                             path=path / GENAI_CONFIG) from e
    return path / name
