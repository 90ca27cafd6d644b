"""Prompts for a decoder: a text file tokenized with the model's own tokenizer, and the token
ids that end a generation.

The tokenizer is a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library), which
Optimum exports and ONNX Runtime GenAI's model builder copy next to the model; the stop
tokens come from the folder's ``genai_config.json``, else the Hugging Face
``generation_config.json`` / ``config.json`` next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..contract.errors import UsageError
from .interface import GENAI_CONFIG

TOKENIZER = "tokenizer.json"


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read the prompts ({e})", path=path) from e
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError("no prompts: the file is empty (one prompt per line)", path=path)
    return prompts


def tokenizer_file(model: Path, given: str | Path | None = None) -> Path:
    """``given`` (a tokenizer.json or a folder holding one), else the one next to ``model``."""
    where = Path(given) if given is not None else model.parent
    path = where / TOKENIZER if where.is_dir() else where
    if not path.is_file():
        raise UsageError(f"no tokenizer found: looked for {path}; give one with --tokenizer "
                         f"(a Hugging Face {TOKENIZER})")
    return path


def encode(prompts: Sequence[str], tokenizer: Path) -> list[list[int]]:
    """Token ids of each prompt, with the special tokens the tokenizer's post-processor adds
    (a BOS where the model's tokenizer puts one)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer))
    except Exception as e:  # the library's own error says what is wrong with the file
        raise UsageError(f"not a Hugging Face tokenizer ({e})", path=tokenizer) from e
    ids = [tok.encode(p).ids for p in prompts]
    empty = [k + 1 for k, i in enumerate(ids) if not i]
    if empty:
        raise UsageError(f"prompt(s) {empty} encode to no tokens", path=tokenizer)
    return ids


def stop_ids(model: Path) -> tuple[int, ...]:
    """The end-of-sequence ids of the model's configuration (none if it names none)."""
    for name in (GENAI_CONFIG, "generation_config.json", "config.json"):
        try:
            cfg = json.loads((model.parent / name).read_text())
        except (OSError, ValueError):
            continue
        eos = (cfg.get("model") or {}).get("eos_token_id") if name == GENAI_CONFIG \
            else cfg.get("eos_token_id")
        if eos is not None:
            return tuple(sorted({int(e) for e in (eos if isinstance(eos, list) else [eos])}))
    return ()
