"""Calibrating a decoder on its own generations: the calls a greedy generation makes after
each of the user's prompts, each marked prefill or decode.

Decode — one token at a time on a filled cache — is where activation sparsity pays, and its
FFN inputs are not distributed like a prompt's: they are the model's own tokens, late in a
sequence. So ``fffc calibrate --prompts`` runs the decoder on every prompt (batch 1: no
padding), then feeds back the argmax of its logits with the cache it returned, and keeps the
two kinds of rows apart (``Rows`` chooses what the thresholds are made of; decode by default).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.analysis import Analysis
from ..contract.errors import FffcError, UsageError
from ..frontend import prompts as text
from ..frontend.interface import Role
from ..verify.feeds import Feed, Feeds, Outputs

GENERATE = 32  # new tokens per prompt


class Phase(enum.Enum):
    """Which call of a generation a feed is."""

    PREFILL = "prefill"  # the prompt, on an empty cache
    DECODE = "decode"  # one generated token, on the cache of the call before


class Rows(enum.Enum):
    """Which calls' FFN inputs a calibration's statistics are made of."""

    DECODE = "decode"
    PREFILL = "prefill"
    ALL = "all"

    @property
    def phases(self) -> frozenset[Phase]:
        return frozenset(Phase) if self is Rows.ALL else frozenset({Phase(self.value)})


@dataclass(frozen=True)
class Prompts:
    """Tokenized prompts and how far each is generated."""

    ids: tuple[tuple[int, ...], ...]
    new_tokens: int  # generated per prompt, unless a stop token comes first
    stop: tuple[int, ...]  # end-of-sequence ids: a generation ends when it makes one
    source: str  # where the prompts came from, for the record

    def to_json(self) -> dict:
        return {"source": self.source, "prompts": len(self.ids), "new_tokens": self.new_tokens,
                "stop": list(self.stop)}


def prompts(model: Path, given: str | Path | Sequence[str], new_tokens: int = GENERATE,
            tokenizer: str | Path | None = None) -> Prompts:
    """``given`` (a file of one prompt per line, or the prompts themselves) tokenized with the
    model's tokenizer (``tokenizer``, else the ``tokenizer.json`` next to ``model``)."""
    if new_tokens < 0:
        raise UsageError(f"--generate {new_tokens}: expected a number of new tokens >= 0")
    if isinstance(given, (str, Path)):
        lines, source = text.read_prompts(given), str(given)
    else:
        lines, source = [p for p in given if p.strip()], f"{len(given)} prompt(s) given"
        if not lines:
            raise UsageError("no prompts: every prompt given is empty")
    ids = text.encode(lines, text.tokenizer_file(model, tokenizer))
    return Prompts(tuple(tuple(i) for i in ids), new_tokens, text.stop_ids(model), source)


def decoder_feeds(model: Analysis) -> Feeds:
    """The feeds of the analysed model, which prompts need to be a decoder with a KV cache
    that takes token ids."""
    f = Feeds(model.proto, model.path)
    if not f.decoder:
        raise UsageError("prompts need a decoder with a KV cache (past key/value inputs); "
                         "this model has none: calibrate it with --data or --synthetic",
                         path=model.path)
    if not f.interface.named(Role.IDS):
        raise UsageError("prompts need a decoder that takes token ids; this one takes none: "
                         "calibrate it with --data", path=model.path)
    return f


@dataclass(frozen=True)
class Call:
    prompt: int  # which prompt's generation
    phase: Phase
    token: int | None  # the generated token a decode call feeds
    feed: Feed
    outputs: Outputs


def calls(model: Analysis, run: Callable[[Feed], Outputs], given: Prompts) -> Iterator[Call]:
    """Every call of a greedy generation after each prompt, in order, with ``run``'s outputs
    (the model's own among them); ONNX Runtime's failure is one line naming the call."""
    f = decoder_feeds(model)
    ids = f.interface.named(Role.IDS)[0].name
    for p, prompt in enumerate(given.ids):
        steps = f.greedy(run, prompt, given.new_tokens, given.stop)
        k = 0
        while True:
            try:
                feed, out = next(steps)
            except StopIteration:
                break
            except FffcError:
                raise
            except Exception as e:  # ORT's own message says which input and why
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UsageError(f"prompt {p + 1} ({len(prompt)} tokens), call {k + 1}: ONNX "
                                 f"Runtime rejected it: {first[:300]}", path=model.path) from e
            phase = Phase.DECODE if k else Phase.PREFILL
            yield Call(p, phase, int(np.asarray(feed[ids]).ravel()[0]) if k else None, feed, out)
            k += 1
