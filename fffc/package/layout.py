"""Where each file of an artifact folder lies: the model (and its external data), the shim,
the kernels, the manifest and, when an ONNX Runtime GenAI folder was compiled, the rest of
that folder around them.

The manifest records the layout (keys ``model``, ``external_data``, ``shim``, ``genai``);
``fffc.runtime`` opens the model and registers the shim it names. A GenAI folder's output
is a GenAI folder too: its decoder replaced by the compiled one (same file name, external
data in ``<name>.data`` when the original had external data or is large), the shim beside
``genai_config.json``, whose decoder ``session_options`` gain ``custom_ops_library`` (the
shim's bare file name: GenAI resolves a relative library path against the model folder
first and refuses one outside it or with ``..``), every other file copied as it is.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import onnx_ir as ir
from google.protobuf.message import DecodeError

from ..contract.errors import UnsupportedModelError
from ..frontend import external_data_files
from ..frontend.genai import GenAIFolder, is_genai_folder, read
from ..frontend.interface import GENAI_CONFIG
from ..frontend.load import INLINE_MAX
from ..runtime import DEFAULT_MODEL
from .native import SHIM_NAME

MANIFEST = "manifest.json"
KERNELS = "kernels"
# A source model larger than this (file and external data) gets an artifact model with
# external data: the rewritten model may hold FFN weights twice (the kernels' layout beside
# the fallback function's), and one protobuf file holds at most 2 GiB.
INLINE_LIMIT = INLINE_MAX
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inline in an external-data model
LIBRARY_KEY = "custom_ops_library"


@dataclass(frozen=True)
class Layout:
    """Paths are relative to the artifact folder, ``external_data`` to the model's folder
    (how ONNX names it); ``copied``: the GenAI folder's other files, relative to it."""

    model: str = DEFAULT_MODEL
    external_data: str | None = None
    shim: str = SHIM_NAME
    genai: GenAIFolder | None = None
    copied: tuple[str, ...] = field(default=())

    @classmethod
    def for_source(cls, path: str | Path) -> Layout:
        """The layout of the artifact compiled from ``path``: a model file, or a GenAI
        folder (refused here, before any slow stage, when its output cannot be written)."""
        path = Path(path)
        genai = read(path) if is_genai_folder(path) else None
        source = genai.decoder_path if genai else path
        data = _external_data(source)
        model = genai.decoder if genai else DEFAULT_MODEL
        size = _size(source) + sum(_size(source.parent / f) for f in data)
        external = f"{PurePosixPath(model).name}.data" if data or size > INLINE_LIMIT else None
        layout = cls(model, external, SHIM_NAME, genai)
        if genai is None:
            return layout
        decoder_dir = PurePosixPath(genai.decoder).parent
        skip = {GENAI_CONFIG, genai.decoder, *(str(decoder_dir / f) for f in data)}
        copied = tuple(sorted(rel for rel in _files(path) if rel not in skip))
        written = layout.written()
        for rel in copied:
            if rel in written or PurePosixPath(rel).parts[0] in written:
                raise UnsupportedModelError(
                    f"the folder holds {rel}, where the compiled folder has fffc's own file "
                    "(an fffc output? compile the original folder)", path=path)
        if (lib := genai.session_options.get(LIBRARY_KEY)) is not None:
            raise UnsupportedModelError(
                f"the decoder's session_options in {GENAI_CONFIG} already name a "
                f"{LIBRARY_KEY} ({lib!r}): GenAI registers one library per model and the "
                "compiled folder needs fffc's shim there; compile a folder without it",
                path=path)
        return cls(model, external, SHIM_NAME, genai, copied)

    @property
    def source(self) -> Path | None:
        """The GenAI folder compiled, if any."""
        return self.genai.folder if self.genai else None

    def written(self) -> set[str]:
        """What fffc itself writes into the folder."""
        out = {MANIFEST, KERNELS, self.shim, self.model}
        if self.external_data:
            out.add(str(PurePosixPath(self.model).parent / self.external_data))
        if self.genai:
            out.add(GENAI_CONFIG)
        return out

    def write_model(self, model: ir.Model, root: Path) -> Path:
        """Save the artifact's model under ``root`` (its weights in ``external_data`` when
        set); the in-memory model is left as it was."""
        path = root / self.model
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.external_data:
            ir.save(model, path, external_data=self.external_data,
                    size_threshold_bytes=EXTERNAL_MIN_BYTES)
        else:
            ir.save(model, path)
        return path

    def complete(self, root: Path, shim: bool) -> None:
        """A GenAI folder's other files copied into ``root`` and its config written, naming
        the shim when there is one; nothing for a plain model."""
        if self.genai is None:
            return
        for rel in self.copied:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.genai.folder / rel, dest)
        (root / GENAI_CONFIG).write_text(json.dumps(self.genai_config(shim), indent=4) + "\n")

    def genai_config(self, shim: bool) -> dict:
        """The compiled folder's ``genai_config.json``: the original's, with the shim as the
        decoder's ``custom_ops_library`` (every other session option kept)."""
        config = copy.deepcopy(self.genai.config)
        if shim:
            decoder = config["model"]["decoder"]
            decoder["session_options"] = {**(decoder.get("session_options") or {}),
                                          LIBRARY_KEY: self.shim}
        return config

    def to_json(self, shim: bool) -> dict:
        """The manifest's keys for the layout."""
        return {
            "model": self.model,
            "external_data": self.external_data,
            "shim": self.shim if shim else None,
            "genai": None if self.genai is None else {
                "source": str(self.genai.folder.resolve()), "config": GENAI_CONFIG,
                "copied": list(self.copied)},
        }


def _external_data(model: Path) -> tuple[str, ...]:
    try:
        return external_data_files(model)
    except (OSError, ValueError, DecodeError):
        return ()  # not a readable model: the load stage says why


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
