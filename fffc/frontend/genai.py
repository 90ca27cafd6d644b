"""ONNX Runtime GenAI model folders as fffc reads them: ``genai_config.json`` names the
decoder (``model.decoder.filename``, relative to the folder) and the session options GenAI
opens it with. The decoder is the model fffc compiles; the rest of the folder (tokenizer,
processor configs, other models) belongs to the folder written around it
(``fffc.package.layout``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..contract.errors import ModelLoadError, UnsupportedModelError
from .interface import GENAI_CONFIG


@dataclass(frozen=True)
class GenAIFolder:
    """A GenAI model folder: its config as read and its decoder's file name."""

    folder: Path
    config: dict
    decoder: str  # model.decoder.filename: a relative path inside the folder

    @property
    def decoder_path(self) -> Path:
        return self.folder / self.decoder

    @property
    def session_options(self) -> dict:
        """The decoder's ``session_options`` (empty when the config has none)."""
        return self.config["model"]["decoder"].get("session_options") or {}


def is_genai_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / GENAI_CONFIG).is_file()


def read(folder: str | Path) -> GenAIFolder:
    """The folder's config and decoder; one typed error for each way it cannot be compiled."""
    folder = Path(folder)
    cfg_path = folder / GENAI_CONFIG
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"cannot read {GENAI_CONFIG}: {e}", path=folder) from e
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{GENAI_CONFIG} is not valid JSON ({e})", path=folder) from e
    model = config.get("model") if isinstance(config, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        raise UnsupportedModelError(f"{GENAI_CONFIG} has no model.decoder section: fffc "
                                    "compiles a GenAI folder's decoder", path=folder)
    name = decoder.get("filename")
    if not isinstance(name, str) or not name:
        what = (f"a pipeline of {len(decoder['pipeline'])} models (model.decoder.pipeline)"
                if isinstance(decoder.get("pipeline"), list) else "not named")
        raise UnsupportedModelError(f"the decoder in {GENAI_CONFIG} is {what}: fffc compiles "
                                    "a decoder held in one ONNX file (model.decoder.filename)",
                                    path=folder)
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ModelLoadError(f"model.decoder.filename {name!r} in {GENAI_CONFIG} is not a "
                             "path inside the folder", path=folder)
    if not (folder / rel).is_file():
        raise ModelLoadError(f"the decoder {name!r} named by {GENAI_CONFIG} "
                             "(model.decoder.filename) does not exist", path=folder)
    options = decoder.get("session_options")
    if options is not None and not isinstance(options, dict):
        raise ModelLoadError(f"model.decoder.session_options in {GENAI_CONFIG} is "
                             f"{type(options).__name__} {options!r:.40}, expected an object "
                             "(ONNX Runtime GenAI's session options)", path=folder)
    return GenAIFolder(folder, config, str(rel))


def model_file(path: str | Path) -> Path:
    """The ONNX file to read for ``path``: a GenAI folder's decoder, else ``path`` itself."""
    return read(path).decoder_path if is_genai_folder(path) else Path(path)
